// Command failover drives the Go etcd client (go.etcd.io/etcd/client/v3) against a Mast
// cluster given all its endpoints, while the test harness kills the leader.
//
// It writes keys <prefix>/<n> one after another, each with a linearizable read of it back,
// and keeps a watch on the prefix (with WithRequireLeader, as services do). Every
// acknowledged put is printed as "acked <key> <revision>" so the harness knows when to kill
// and what must survive. It stops after -writes acknowledged puts or -timeout, then checks:
// the watch saw every acknowledged put, in revision order, with no revision twice. The last
// line is a JSON summary; the exit code is 1 when an invariant broke.
//
// With -probe-require-leader it only sends one put WithRequireLeader (the "hasleader"
// metadata) and prints "ok" or the error the client returned.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

type summary struct {
	Acked        int            `json:"acked"`
	Failed       int            `json:"failed"`
	Watched      int            `json:"watched"`
	LongestGapMs float64        `json:"longest_gap_ms"`
	Errors       map[string]int `json:"errors"`
	Problems     []string       `json:"problems"`
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated client URLs of every member")
	prefix := flag.String("prefix", "go/failover", "key prefix")
	writes := flag.Int("writes", 300, "stop after this many acknowledged puts")
	timeout := flag.Duration("timeout", 60*time.Second, "stop after this long in any case")
	probe := flag.Bool("probe-require-leader", false,
		"only send one put WithRequireLeader and print its outcome (\"ok\" or the error)")
	flag.Parse()

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*endpoints, ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(2)
	}
	defer cli.Close()

	if *probe {
		pctx, pcancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), 5*time.Second)
		defer pcancel()
		if _, err := cli.Put(pctx, *prefix+"/probe", "x"); err != nil {
			fmt.Println(err.Error())
		} else {
			fmt.Println("ok")
		}
		return
	}

	deadline := time.Now().Add(*timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(15*time.Second))
	defer cancel()

	// The watch starts before the first put, from the current revision.
	wctx := clientv3.WithRequireLeader(ctx)
	watch := cli.Watch(wctx, *prefix+"/", clientv3.WithPrefix())

	s := summary{Errors: map[string]int{}}
	acked := map[string]int64{}
	last := time.Now()
	for n := 0; s.Acked < *writes && time.Now().Before(deadline); n++ {
		key := fmt.Sprintf("%s/%06d", *prefix, n)
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := cli.Put(pctx, key, fmt.Sprint(n))
		pcancel()
		if err != nil {
			// A put that failed may still have been applied: only acknowledged ones count.
			s.Failed++
			s.Errors[err.Error()]++
			continue
		}
		rev := resp.Header.Revision
		now := time.Now()
		if gap := float64(now.Sub(last).Microseconds()) / 1000; gap > s.LongestGapMs {
			s.LongestGapMs = gap
		}
		last = now
		acked[key] = rev
		s.Acked++
		fmt.Printf("acked %s %d\n", key, rev)
		// A linearizable read of what was just acknowledged sees it.
		gctx, gcancel := context.WithTimeout(ctx, 3*time.Second)
		got, err := cli.Get(gctx, key)
		gcancel()
		if err == nil && (len(got.Kvs) != 1 || got.Kvs[0].ModRevision < rev) {
			s.Problems = append(s.Problems, fmt.Sprintf("read of %s after its put at %d: %v", key, rev, got.Kvs))
		}
	}

	// Drain the watch until every acknowledged put was seen or time runs out.
	seen := map[string]bool{}
	seenAcked := 0
	var lastRev int64
	drain := time.After(15 * time.Second)
loop:
	for seenAcked < len(acked) {
		select {
		case wr, ok := <-watch:
			if !ok {
				s.Problems = append(s.Problems, "watch channel closed")
				break loop
			}
			if err := wr.Err(); err != nil {
				s.Problems = append(s.Problems, "watch error: "+err.Error())
				break loop
			}
			for _, ev := range wr.Events {
				rev := ev.Kv.ModRevision
				if rev <= lastRev {
					s.Problems = append(s.Problems, fmt.Sprintf("watch event at %d after %d", rev, lastRev))
				}
				lastRev = rev
				k := string(ev.Kv.Key)
				if seen[k] {
					s.Problems = append(s.Problems, "watch event twice for "+k)
				}
				seen[k] = true
				if _, ok := acked[k]; ok {
					seenAcked++
				}
				s.Watched++
			}
		case <-drain:
			break loop
		}
	}
	for k, rev := range acked {
		if !seen[k] {
			s.Problems = append(s.Problems, fmt.Sprintf("acknowledged put %s at %d never watched", k, rev))
		}
	}
	out, _ := json.Marshal(s)
	fmt.Println(string(out))
	if len(s.Problems) > 0 {
		os.Exit(1)
	}
}
