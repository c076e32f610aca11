package orchestrator

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// A rollout starts one canary, grows while nodes succeed, never runs more
// than its limit at once, and starts nothing after a failure.
func TestRolloutSlowStartCapAndStopEarly(t *testing.T) {
	var mu sync.Mutex
	running, peak := 0, 0
	var starts []int // concurrency seen by each start
	fn := func(fail int) func(i int) error {
		return func(i int) error {
			mu.Lock()
			running++
			peak = max(peak, running)
			starts = append(starts, running)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			running--
			mu.Unlock()
			if i == fail {
				return errors.New("boom")
			}
			return nil
		}
	}
	errs := rollout(context.Background(), 60, 8, fn(-1))
	if err := rolloutError(errs); err != nil {
		t.Fatal(err)
	}
	if starts[0] != 1 || peak != 8 {
		t.Errorf("first start saw %d running (want the canary alone), peak %d (want the limit 8)", starts[0], peak)
	}

	starts, peak = nil, 0
	errs = rollout(context.Background(), 60, 8, fn(5))
	started := 0
	for _, err := range errs {
		if !errors.Is(err, errNotStarted) {
			started++
		}
	}
	if started > 5+8 || errs[5] == nil {
		t.Errorf("%d nodes started although node 5 failed", started)
	}
	if err := rolloutError(errs); err == nil || !errors.Is(err, errs[5]) {
		t.Errorf("the failure is not reported: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if errs := rollout(ctx, 3, 2, fn(-1)); !errors.Is(errs[0], context.Canceled) {
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
