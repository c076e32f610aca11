package orchestrator

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// A rollout starts one canary, grows while nodes succeed, never runs more
// than its limit at once, and starts nothing after a failure.
func TestRolloutSlowStartCapAndStopEarly(t *testing.T) {
	const limit = 8
	var mu sync.Mutex
	running, peak := 0, 0
	var starts []int // concurrency seen by each start
	// Each node stays busy until limit nodes run at once (or 300 ms went
	// by, while the slow start allows fewer), so the peak does not depend
	// on how the machine schedules goroutines.
	busy := func(int) error {
		mu.Lock()
		running++
		peak = max(peak, running)
		starts = append(starts, running)
		mu.Unlock()
		for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			mu.Lock()
			full := running >= limit
			mu.Unlock()
			if full {
				break
			}
		}
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	}
	errs := rollout(context.Background(), 40, limit, busy)
	if err := rolloutError(errs); err != nil {
		t.Fatal(err)
	}
	if starts[0] != 1 || peak != limit {
		t.Errorf("first start saw %d running (want the canary alone), peak %d (want the limit %d)", starts[0], peak, limit)
	}

	// Node 5 fails; the nodes after it stay busy until well after that
	// (200 ms), so at most limit-1 of them can have started by the time
	// the failure is known, and none may start after.
	release := make(chan struct{})
	var started []int
	failing := func(i int) error {
		mu.Lock()
		started = append(started, i)
		mu.Unlock()
		switch {
		case i < 5:
			return nil
		case i == 5:
			time.AfterFunc(200*time.Millisecond, func() { close(release) })
			return errors.New("boom")
		}
		<-release
		return nil
	}
	errs = rollout(context.Background(), 60, limit, failing)
	if len(started) > 5+limit || errs[5] == nil {
		t.Errorf("nodes %v started although node 5 failed", started)
	}
	for i, err := range errs {
		if notStarted := errors.Is(err, errNotStarted); notStarted == slices.Contains(started, i) {
			t.Errorf("node %d: error %v, started %v", i, err, slices.Contains(started, i))
		}
	}
	if err := rolloutError(errs); err == nil || !errors.Is(err, errs[5]) {
		t.Errorf("the failure is not reported: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if errs := rollout(ctx, 3, 2, busy); !errors.Is(errs[0], context.Canceled) {
		t.Errorf("a cancelled rollout started: %v", errs)
	}
}

func TestParallelism(t *testing.T) {
	for in, want := range map[string][2]int{"10%": {10, 2}, "25%": {100, 25}, "3": {1000, 3}, "100%": {7, 7}} {
		p, err := ParseParallelism(in)
		if err != nil || p.Cap(want[0]) != want[1] {
			t.Errorf("%s of %d workers: %d %v, want %d", in, want[0], p.Cap(want[0]), err, want[1])
		}
	}
	for _, bad := range []string{"0", "-1", "0%", "101%", "x", "5%%"} {
		if _, err := ParseParallelism(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
