// Command concurrency drives the Go client's concurrency package
// (go.etcd.io/etcd/client/v3/concurrency) against one endpoint: Mutex, Election and STM, as
// services use them for locks, leader election and software transactions.
//
//   - Mutex: -workers goroutines, each with its own session, take one mutex -rounds times and,
//     while holding it, read a counter key and write it back plus one. With mutual exclusion
//     no increment is lost: the counter ends at workers × rounds. TryLock on a held mutex
//     answers ErrLocked.
//   - Election: two sessions campaign; the first leads, Leader and Observe show its value and
//     a Proclaim; when it resigns the second leads.
//   - STM: -workers goroutines move money between -accounts keys at random with serializable
//     STM transactions; the total never changes.
//
// The last line is "ok", or the first failure (exit code 1). Every step is bounded by
// -timeout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

func fail(format string, args ...any) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:2379", "the etcd endpoints, comma-separated")
	workers := flag.Int("workers", 4, "concurrent goroutines")
	rounds := flag.Int("rounds", 25, "mutex rounds per worker")
	accounts := flag.Int("accounts", 5, "STM accounts")
	transfers := flag.Int("transfers", 25, "STM transfers per worker")
	timeout := flag.Duration("timeout", 60*time.Second, "bound of the whole run")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*endpoint, ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		fail("connect: %v", err)
	}
	defer cli.Close()

	mutex(ctx, cli, *workers, *rounds)
	election(ctx, cli)
	stm(ctx, cli, *workers, *accounts, *transfers)
	fmt.Println("ok")
}

func session(ctx context.Context, cli *clientv3.Client) *concurrency.Session {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(30), concurrency.WithContext(ctx))
	if err != nil {
		fail("session: %v", err)
	}
	return s
}

func mutex(ctx context.Context, cli *clientv3.Client, workers, rounds int) {
	const counter = "/go-concurrency/counter"
	if _, err := cli.Put(ctx, counter, "0"); err != nil {
		fail("put counter: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := session(ctx, cli)
			defer s.Close()
			m := concurrency.NewMutex(s, "/go-concurrency/mutex")
			for r := 0; r < rounds; r++ {
				if err := m.Lock(ctx); err != nil {
					errs <- fmt.Errorf("lock: %w", err)
					return
				}
				resp, err := cli.Get(ctx, counter)
				if err != nil {
					errs <- err
					return
				}
				n, _ := strconv.Atoi(string(resp.Kvs[0].Value))
				if _, err := cli.Put(ctx, counter, strconv.Itoa(n+1)); err != nil {
					errs <- err
					return
				}
				if err := m.Unlock(ctx); err != nil {
					errs <- fmt.Errorf("unlock: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fail("mutex: %v", err)
	}
	resp, err := cli.Get(ctx, counter)
	if err != nil {
		fail("get counter: %v", err)
	}
	if got := string(resp.Kvs[0].Value); got != strconv.Itoa(workers*rounds) {
		fail("mutex: counter is %s after %d locked increments: mutual exclusion broke", got, workers*rounds)
	}

	// TryLock on a held mutex.
	a, b := session(ctx, cli), session(ctx, cli)
	defer a.Close()
	defer b.Close()
	ma, mb := concurrency.NewMutex(a, "/go-concurrency/try"), concurrency.NewMutex(b, "/go-concurrency/try")
	if err := ma.Lock(ctx); err != nil {
		fail("lock a: %v", err)
	}
	if err := mb.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
		fail("TryLock on a held mutex: %v, want ErrLocked", err)
	}
	if err := ma.Unlock(ctx); err != nil {
		fail("unlock a: %v", err)
	}
	if err := mb.TryLock(ctx); err != nil {
		fail("TryLock on a free mutex: %v", err)
	}
	if err := mb.Unlock(ctx); err != nil {
		fail("unlock b: %v", err)
	}
}

func election(ctx context.Context, cli *clientv3.Client) {
	const name = "/go-concurrency/election"
	a, b := session(ctx, cli), session(ctx, cli)
	defer a.Close()
	defer b.Close()
	ea, eb := concurrency.NewElection(a, name), concurrency.NewElection(b, name)
	if err := ea.Campaign(ctx, "alice"); err != nil {
		fail("campaign a: %v", err)
	}
	obsCtx, stopObs := context.WithCancel(ctx)
	defer stopObs()
	obs := eb.Observe(obsCtx)
	expect := func(want string) {
		select {
		case r, ok := <-obs:
			if !ok {
				fail("observe closed, waiting for %q", want)
			}
			if got := string(r.Kvs[0].Value); got != want {
				fail("observed %q, want %q", got, want)
			}
		case <-ctx.Done():
			fail("observe: nothing while waiting for %q", want)
		}
	}
	expect("alice")
	if err := ea.Proclaim(ctx, "alice-2"); err != nil {
		fail("proclaim: %v", err)
	}
	expect("alice-2")

	won := make(chan error, 1)
	go func() { won <- eb.Campaign(ctx, "bob") }()
	leader, err := eb.Leader(ctx)
	if err != nil || string(leader.Kvs[0].Value) != "alice-2" {
		fail("leader while a leads: %v %v", leader, err)
	}
	if err := ea.Resign(ctx); err != nil {
		fail("resign: %v", err)
	}
	if err := <-won; err != nil {
		fail("campaign b: %v", err)
	}
	expect("bob")
	leader, err = ea.Leader(ctx)
	if err != nil || string(leader.Kvs[0].Value) != "bob" {
		fail("leader after a resigned: %v %v", leader, err)
	}
}

func stm(ctx context.Context, cli *clientv3.Client, workers, accounts, transfers int) {
	key := func(i int) string { return fmt.Sprintf("/go-concurrency/account/%d", i) }
	const start = 100
	for i := 0; i < accounts; i++ {
		if _, err := cli.Put(ctx, key(i), strconv.Itoa(start)); err != nil {
			fail("put account: %v", err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(seed))
			for t := 0; t < transfers; t++ {
				from, to := rnd.Intn(accounts), rnd.Intn(accounts)
				if from == to {
					continue
				}
				amount := 1 + rnd.Intn(10)
				_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
					f, _ := strconv.Atoi(s.Get(key(from)))
					g, _ := strconv.Atoi(s.Get(key(to)))
					if f < amount {
						return nil
					}
					s.Put(key(from), strconv.Itoa(f-amount))
					s.Put(key(to), strconv.Itoa(g+amount))
					return nil
				}, concurrency.WithAbortContext(ctx), concurrency.WithIsolation(concurrency.Serializable))
				if err != nil {
					errs <- err
					return
				}
			}
		}(int64(w + 1))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fail("stm: %v", err)
	}
	total := 0
	for i := 0; i < accounts; i++ {
		resp, err := cli.Get(ctx, key(i))
		if err != nil {
			fail("get account: %v", err)
		}
		n, _ := strconv.Atoi(string(resp.Kvs[0].Value))
		if n < 0 {
			fail("stm: account %d is negative (%d)", i, n)
		}
		total += n
	}
	if total != start*accounts {
		fail("stm: the total is %d, want %d: a transaction was not isolated", total, start*accounts)
	}
}
