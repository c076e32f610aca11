package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Parallelism is how many worker nodes are changed at once: a count, or a
// percentage of the selected workers (at least 2 then, so small clusters
// go as fast as before).
type Parallelism struct {
	Count   int
	Percent int
}

// DefaultParallelism scales with the cluster: 10 workers take 6 rounds,
// 1000 take 16 (see rollout).
var DefaultParallelism = Parallelism{Percent: 10}

// ParseParallelism reads "N" or "N%".
func ParseParallelism(s string) (Parallelism, error) {
	s = strings.TrimSpace(s)
	if v, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return Parallelism{}, fmt.Errorf("%q is not a percentage from 1%% to 100%%", s)
		}
		return Parallelism{Percent: n}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return Parallelism{}, fmt.Errorf("%q is neither a count of at least 1 nor a percentage like 10%%", s)
	}
	return Parallelism{Count: n}, nil
}

func (p Parallelism) String() string {
	if p.Percent > 0 {
		return strconv.Itoa(p.Percent) + "%"
	}
	return strconv.Itoa(p.Count)
}

// Cap is how many of workers may be changed at once.
func (p Parallelism) Cap(workers int) int {
	if p.Percent > 0 {
		return max(2, (p.Percent*workers+99)/100)
	}
	return max(1, p.Count)
}

// fanout bounds read-only work done on every node at once (starting the
// agent pods, inspecting): nothing changes, so only the API's load counts.
const fanout = 32

// rollout runs fn for 0..n-1 as a careful rollout does: one canary first;
// then, while all goes well, up to twice as many at once as have
// succeeded, at most limit; after the first failure nothing new starts
// (those running finish), so a bad change stops early. It returns the
// errors indexed like the items (ctx's error for those never started).
func rollout(ctx context.Context, n, limit int, fn func(i int) error) []error {
	errs := make([]error, n)
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	running, succeeded, failed := 0, 0, false
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { mu.Lock(); cond.Broadcast(); mu.Unlock() })
	defer stop()
	for i := 0; i < n; i++ {
		mu.Lock()
		for !failed && ctx.Err() == nil && running >= min(limit, max(1, 2*succeeded)) {
			cond.Wait()
		}
		if failed || ctx.Err() != nil {
			mu.Unlock()
			for j := i; j < n; j++ {
				if ctx.Err() != nil {
					errs[j] = ctx.Err()
				} else {
					errs[j] = errNotStarted
				}
			}
			break
		}
		running++
		mu.Unlock()
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := fn(i)
			mu.Lock()
			errs[i] = err
			running--
			if err != nil {
				failed = true
			} else {
				succeeded++
			}
			cond.Broadcast()
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	return errs
}

// errNotStarted marks items a rollout did not start after a failure.
var errNotStarted = errors.New("not started: an earlier node failed")

// rolloutError joins a rollout's failures and counts what it did not start.
func rolloutError(errs []error) error {
	var failed []error
	notStarted := 0
	for _, err := range errs {
		switch {
		case errors.Is(err, errNotStarted):
			notStarted++
		case err != nil:
			failed = append(failed, err)
		}
	}
	if notStarted > 0 {
		failed = append(failed, fmt.Errorf("%d more worker(s) were not started after that failure: fix it and run again (what was done is skipped)", notStarted))
	}
	return errors.Join(failed...)
}

// rolloutNodes does fn on each node in a rollout (at most limit at once,
// see rollout), each with a report of its own that starts as rep (run,
// user, what it rolls back) and is merged into rep in the nodes' order; it
// returns rolloutError of the outcomes.
func rolloutNodes(ctx context.Context, rep *Report, nodes []agentPod, limit int, fn func(ap agentPod, rep *Report) error) error {
	reps := make([]Report, len(nodes))
	errs := rollout(ctx, len(nodes), limit, func(i int) error {
		reps[i].Run, reps[i].User, reps[i].RolledBack = rep.Run, rep.User, rep.RolledBack
		return fn(nodes[i], &reps[i])
	})
	for i := range reps {
		rep.merge(&reps[i])
	}
	return rolloutError(errs)
}
