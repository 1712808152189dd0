package mast;

import com.alibaba.nacos.api.NacosFactory;
import com.alibaba.nacos.api.config.ConfigService;
import com.alibaba.nacos.api.config.listener.AbstractListener;
import com.alibaba.nacos.api.naming.NamingService;
import com.alibaba.nacos.api.naming.listener.NamingEvent;
import com.alibaba.nacos.api.naming.pojo.Instance;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.function.BooleanSupplier;
import java.util.stream.Collectors;

/**
 * The Java Nacos client (gRPC) against Mast, unchanged: config publish / get / listen (a change
 * made through etcd reaches the listener), naming register / list / subscribe / deregister.
 * Arguments: the Nacos address (host:port) and the etcd client URL, and `auth` when the server
 * runs with auth on and user root / guang: then a login with the right password publishes and
 * reads, and one with a wrong password is refused. Prints "ok" and exits 0 when every check
 * holds; exits 1 with the reason otherwise. Every wait is bounded.
 */
public final class NacosJava {
    private static final long WAIT_MS = 15_000;

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    private static void until(BooleanSupplier cond, String what) throws InterruptedException {
        long deadline = System.currentTimeMillis() + WAIT_MS;
        while (!cond.getAsBoolean()) {
            if (System.currentTimeMillis() > deadline) {
                throw new AssertionError("timed out: " + what);
            }
            Thread.sleep(50);
        }
    }

    private static void etcdPut(String etcd, String key, String value) throws Exception {
        Base64.Encoder b64 = Base64.getEncoder();
        String body = "{\"key\":\"" + b64.encodeToString(key.getBytes()) + "\",\"value\":\""
                + b64.encodeToString(value.getBytes()) + "\"}";
        HttpResponse<String> r = HttpClient.newHttpClient().send(
                HttpRequest.newBuilder(URI.create(etcd + "/v3/kv/put"))
                        .POST(HttpRequest.BodyPublishers.ofString(body)).build(),
                HttpResponse.BodyHandlers.ofString());
        check(r.statusCode() == 200, "etcd put: " + r.body());
    }

    private static void auth(String addr) throws Exception {
        Properties good = new Properties();
        good.put("serverAddr", addr);
        good.put("username", "root");
        good.put("password", "guang");
        ConfigService root = NacosFactory.createConfigService(good);
        check(root.publishConfig("auth.txt", "G", "hello"), "root publishes");
        check("hello".equals(root.getConfig("auth.txt", "G", 3000)), "root reads");
        root.shutDown();
        Properties bad = new Properties();
        bad.put("serverAddr", addr);
        bad.put("username", "root");
        bad.put("password", "wrong");
        ConfigService intruder = NacosFactory.createConfigService(bad);
        boolean published;
        try {
            published = intruder.publishConfig("auth.txt", "G", "evil");
        } catch (Exception e) {
            published = false;
        }
        check(!published, "a wrong password publishes nothing");
        String read;
        try {
            read = intruder.getConfig("auth.txt", "G", 3000);
        } catch (com.alibaba.nacos.api.exception.NacosException e) {
            check(e.getErrCode() == 403, "refused with 403: " + e);
            read = null;
        }
        check(read == null, "a wrong password reads nothing");
        intruder.shutDown();
    }

    public static void main(String[] args) throws Exception {
        String addr = args[0];
        String etcd = args[1];
        if (args.length > 2 && args[2].equals("auth")) {
            auth(addr);
            System.out.println("ok");
            System.exit(0);
        }
        Properties props = new Properties();
        props.put("serverAddr", addr);
        props.put("namespace", "dev");

        ConfigService config = NacosFactory.createConfigService(props);
        check(config.publishConfig("java.json", "DEFAULT_GROUP", "{\"v\":1}", "json"), "publish");
        until(() -> {
            try {
                return "{\"v\":1}".equals(config.getConfig("java.json", "DEFAULT_GROUP", 3000));
            } catch (Exception e) {
                return false;
            }
        }, "getConfig returns the published content");
        List<String> seen = new CopyOnWriteArrayList<>();
        config.addListener("java.json", "DEFAULT_GROUP", new AbstractListener() {
            @Override
            public void receiveConfigInfo(String content) {
                seen.add(content);
            }
        });
        etcdPut(etcd, "/configs/dev/DEFAULT_GROUP/java.json", "{\"v\":2}");
        until(() -> seen.contains("{\"v\":2}"), "the listener gets an etcd put");
        check(config.publishConfig("java.json", "DEFAULT_GROUP", "{\"v\":3}", "json"), "publish 3");
        until(() -> seen.contains("{\"v\":3}"), "the listener gets a publish");
        config.shutDown();

        NamingService naming = NacosFactory.createNamingService(props);
        naming.registerInstance("java-svc", "G", "10.8.0.1", 80);
        Instance second = new Instance();
        second.setIp("10.8.0.2");
        second.setPort(80);
        second.setWeight(2.0);
        naming.registerInstance("java-svc", "G", second);
        until(() -> {
            try {
                return naming.getAllInstances("java-svc", "G", false).size() == 2;
            } catch (Exception e) {
                return false;
            }
        }, "both instances listed");
        List<List<String>> pushed = new CopyOnWriteArrayList<>();
        naming.subscribe("java-svc", "G", event -> {
            if (event instanceof NamingEvent) {
                List<String> ips = new ArrayList<>();
                for (Instance i : ((NamingEvent) event).getInstances()) {
                    ips.add(i.getIp());
                }
                pushed.add(ips.stream().sorted().collect(Collectors.toList()));
            }
        });
        naming.deregisterInstance("java-svc", "G", "10.8.0.1", 80);
        until(() -> pushed.contains(List.of("10.8.0.2")), "the subscriber sees one leave");
        naming.shutDown();
        System.out.println("ok");
        System.exit(0);
    }
}
