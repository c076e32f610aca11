package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const (
	// LeaseName is the cluster-wide lock of rotations: one run at a time.
	LeaseName = "rotate-certs"
	// runAnnotation keeps the record of the last run on the lease.
	runAnnotation = "rotate-certs.io/last-run"
	leaseDuration = 2 * time.Minute
	leaseRenew    = 20 * time.Second
)

// ErrClusterLocked is wrapped when another run holds the cluster's lock.
var ErrClusterLocked = errors.New("another kubectl rotate-certs run holds the cluster's lock")

// Run states in the run record.
const (
	RunRunning     = "running"
	RunCompleted   = "completed"
	RunFailed      = "failed"
	RunInterrupted = "interrupted"
)

// RunRecord is what the cluster remembers of the last run (on the lease),
// so a later run knows whether there is an interrupted one to resume.
type RunRecord struct {
	ID       string        `json:"id"`
	Kind     string        `json:"kind"` // rotate, rollback
	Services []string      `json:"services,omitempty"`
	Validity time.Duration `json:"validity,omitempty"`
	Started  time.Time     `json:"started"`
	Ended    *time.Time    `json:"ended,omitempty"`
	State    string        `json:"state"`
	Holder   string        `json:"holder"`
	// Nodes the run completed (every step on them done and verified).
	Done []string `json:"done,omitempty"`
}

// clusterLock is a held lease, renewed in the background until released.
type clusterLock struct {
	r      *Runner
	mu     sync.Mutex
	record RunRecord
	stop   chan struct{}
	done   chan struct{}
}

// lockCluster takes the cluster's lease for a run and returns it with the
// record of the previous run (nil if none). Another live holder makes it
// fail at once, saying who holds it and since when; a holder that stopped
// renewing (its plugin was killed) is taken over after the lease expires.
func (r *Runner) lockCluster(ctx context.Context, rec RunRecord) (*clusterLock, *RunRecord, error) {
	rec.Holder = r.whoAmI(ctx)
	rec.State = RunRunning
	leases := r.Client.CoordinationV1().Leases(Namespace)
	for attempt := 0; ; attempt++ {
		now := metav1.NowMicro()
		l, err := leases.Get(ctx, LeaseName, metav1.GetOptions{})
		exists := err == nil
		if apierrors.IsNotFound(err) {
			l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseName, Namespace: Namespace,
				Labels: map[string]string{LabelApp: AppName}}}
			err = nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading the lock lease %s/%s: %w", Namespace, LeaseName, err)
		}
		if holder := ptr.Deref(l.Spec.HolderIdentity, ""); holder != "" && l.Spec.RenewTime != nil {
			expires := l.Spec.RenewTime.Add(time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, 0)) * time.Second)
			if now.Time.Before(expires) {
				since := "an unknown time"
				if l.Spec.AcquireTime != nil {
					since = l.Spec.AcquireTime.UTC().Format(time.RFC3339)
				}
				return nil, nil, fmt.Errorf("%w: %s, since %s; wait for it to end (if it was killed, the lock expires at %s)",
					ErrClusterLocked, holder, since, expires.UTC().Format(time.RFC3339))
			}
		}
		var prev *RunRecord
		if raw := l.Annotations[runAnnotation]; raw != "" {
			var p RunRecord
			if json.Unmarshal([]byte(raw), &p) == nil {
				if p.State == RunRunning {
					p.State = RunInterrupted // its holder vanished
				}
				prev = &p
			}
		}
		data, _ := json.Marshal(rec)
		if l.Annotations == nil {
			l.Annotations = map[string]string{}
		}
		l.Annotations[runAnnotation] = string(data)
		l.Spec.HolderIdentity = ptr.To(rec.Holder + ", run " + rec.ID)
		l.Spec.LeaseDurationSeconds = ptr.To(int32(leaseDuration / time.Second))
		l.Spec.AcquireTime, l.Spec.RenewTime = &now, &now
		if !exists {
			_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		} else {
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if (apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) && attempt < 3 {
			continue // someone else moved: look again
		}
		if err != nil {
			return nil, nil, fmt.Errorf("taking the lock lease %s/%s: %w", Namespace, LeaseName, err)
		}
		cl := &clusterLock{r: r, record: rec, stop: make(chan struct{}), done: make(chan struct{})}
		go cl.renew()
		return cl, prev, nil
	}
}

// whoAmI names the user and this machine, for the lock's holder.
func (r *Runner) whoAmI(ctx context.Context) string {
	user := r.userName(ctx)
	if user == "" {
		user = "unknown user"
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s on %s (pid %d)", user, host, os.Getpid())
}

// userName is the user as the API server names them (SelfSubjectReview,
// which every authenticated user may ask by default), asked once; empty
// if it did not answer.
func (r *Runner) userName(ctx context.Context) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.user == nil {
		name := ""
		if rev, err := r.Client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); err == nil {
			name = rev.Status.UserInfo.Username
		}
		r.user = &name
	}
	return *r.user
}

func (cl *clusterLock) renew() {
	defer close(cl.done)
	t := time.NewTicker(leaseRenew)
	defer t.Stop()
	for {
		select {
		case <-cl.stop:
			return
		case <-t.C:
			_ = cl.update(func(l *coordinationv1.Lease) { now := metav1.NowMicro(); l.Spec.RenewTime = &now })
		}
	}
}

// nodeDone records a node the run completed.
func (cl *clusterLock) nodeDone(node string) {
	if cl == nil {
		return
	}
	cl.mu.Lock()
	if !slices.Contains(cl.record.Done, node) {
		cl.record.Done = append(cl.record.Done, node)
	}
	cl.mu.Unlock()
	_ = cl.update(nil)
}

// release records how the run ended and gives the lock up.
func (cl *clusterLock) release(state string) error {
	if cl == nil {
		return nil
	}
	close(cl.stop)
	<-cl.done
	cl.mu.Lock()
	cl.record.State = state
	cl.record.Ended = ptr.To(time.Now().UTC())
	cl.mu.Unlock()
	return cl.update(func(l *coordinationv1.Lease) { l.Spec.HolderIdentity = nil; l.Spec.RenewTime = nil })
}

// update writes the run record (and what change does) to the lease, with
// its own timeout: it also runs after the run's context ended.
func (cl *clusterLock) update(change func(*coordinationv1.Lease)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	leases := cl.r.Client.CoordinationV1().Leases(Namespace)
	var err error
	for range 3 {
		var l *coordinationv1.Lease
		if l, err = leases.Get(ctx, LeaseName, metav1.GetOptions{}); err != nil {
			continue
		}
		cl.mu.Lock()
		data, _ := json.Marshal(cl.record)
		cl.mu.Unlock()
		if l.Annotations == nil {
			l.Annotations = map[string]string{}
		}
		l.Annotations[runAnnotation] = string(data)
		if change != nil {
			change(l)
		}
		if _, err = leases.Update(ctx, l, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			return err
		}
	}
	return err
}
