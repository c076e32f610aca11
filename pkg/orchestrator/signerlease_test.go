package orchestrator

import (
	"context"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

func signerLease(holder string) *coordinationv1.Lease {
	now := metav1.NowMicro()
	return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: SignerLeaseName, Namespace: Namespace},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To(int32(15)), RenewTime: &now, AcquireTime: &now, LeaseTransitions: ptr.To(int32(3))}}
}

func leaseHolder(t *testing.T, r *Runner) string {
	t.Helper()
	l, err := r.Client.CoordinationV1().Leases(Namespace).Get(context.Background(), SignerLeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ptr.Deref(l.Spec.HolderIdentity, "<nil>")
}

// When the agent stopped the kube-controller-manager that held the signer's
// lease, the plugin releases that lease as the stopped instance would have
// with --leader-elect-release-on-cancel: the new instance signs the next
// kubelet CSR at once instead of after the lease's 15 s.
func TestRotateReleasesTheLeaseOfTheStoppedSigner(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	if err := c.Tracker().Add(signerLease("cp-1_0f6c4a7e-old")); err != nil {
		t.Fatal(err)
	}
	r := newTestRunner(c, newFakeAgents(t, c))
	if _, err := r.Rotate(context.Background(), allOptions()); err != nil {
		t.Fatal(err)
	}
	if got := leaseHolder(t, r); got != "" {
		t.Errorf("the stopped leader still holds the lease: %q", got)
	}
	l, _ := c.CoordinationV1().Leases(Namespace).Get(context.Background(), SignerLeaseName, metav1.GetOptions{})
	if ptr.Deref(l.Spec.LeaseTransitions, 0) != 3 || ptr.Deref(l.Spec.LeaseDurationSeconds, 0) != 1 {
		t.Errorf("released lease %+v, want the transitions kept and a 1 s duration", l.Spec)
	}
}

// The lease is left alone when its holder is not the instance the agent
// stopped: another node's leader, or a new instance that took it already.
func TestRotateLeavesALiveSignersLeaseAlone(t *testing.T) {
	for name, tc := range map[string]struct {
		holder      string
		duringRenew string // holder the lease gets while the node renews
		restarted   bool
	}{
		"another node leads":                        {holder: "cp-2_77aa", restarted: true},
		"a new instance took it meanwhile":          {holder: "cp-1_old", duringRenew: "cp-1_new", restarted: true},
		"kube-controller-manager was not restarted": {holder: "cp-1_old"},
	} {
		t.Run(name, func(t *testing.T) {
			c := fakeCluster(t, []string{"cp-1", "cp-2"}, nil)
			if err := c.Tracker().Add(signerLease(tc.holder)); err != nil {
				t.Fatal(err)
			}
			f := newFakeAgents(t, c)
			f.noKCMRestart = !tc.restarted
			if tc.duringRenew != "" {
				f.onRenew = func() {
					l := signerLease(tc.duringRenew)
					l.ResourceVersion = "7"
					if err := c.Tracker().Update(coordinationv1.SchemeGroupVersion.WithResource("leases"), l, Namespace); err != nil {
						t.Error(err)
					}
				}
			}
			var updates int
			c.PrependReactor("update", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease).Name == SignerLeaseName {
					updates++
				}
				return false, nil, nil
			})
			o := allOptions()
			o.NodeNames = []string{"cp-1"}
			r := newTestRunner(c, f)
			if _, err := r.Rotate(context.Background(), o); err != nil {
				t.Fatal(err)
			}
			want := tc.holder
			if tc.duringRenew != "" {
				want = tc.duringRenew
			}
			if got := leaseHolder(t, r); got != want || updates != 0 {
				t.Errorf("holder %q after %d update(s), want %q untouched", got, updates, want)
			}
		})
	}
}
