package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

var cpServices = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "admin"}

func serialOf(t *testing.T, root, name string) string {
	t.Helper()
	for _, c := range pki.Inventory {
		if c.Name == name {
			cert, err := pki.ReadCertificate(root, c)
			must(t, err)
			return cert.SerialNumber.String()
		}
	}
	t.Fatalf("no %s", name)
	return ""
}

// A control plane's renewal ends with every certificate new, proven served
// by etcd and kube-apiserver (which reload them), and only the two
// components that cannot reload restarted.
func TestRenewControlPlaneProvesReloads(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	pids := map[string]int{}
	for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		pids[c] = f.proc.pid(c)
	}
	oldAPIServer := serialOf(t, f.root, "apiserver")
	res := f.agent().Handle(context.Background(), request(api.Renew, cpServices...))
	if res.Outcome != api.Done {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	if len(res.Renew.Changes) != 11 {
		t.Errorf("%d changes, want 11", len(res.Renew.Changes))
	}
	apiserver, etcdServer, etcdPeer := serialOf(t, f.root, "apiserver"), serialOf(t, f.root, "etcd-server"), serialOf(t, f.root, "etcd-peer")
	if apiserver == oldAPIServer {
		t.Error("apiserver.crt not renewed")
	}
	verified := strings.Join(res.Renew.Verified, "\n")
	for _, s := range []string{"apiserver serial " + apiserver, "etcd-server serial " + etcdServer, "etcd-peer serial " + etcdPeer} {
		if !strings.Contains(verified, s) {
			t.Errorf("not verified: %s (verified: %s)", s, verified)
		}
	}
	for c, pid := range pids {
		restarted := f.proc.pid(c) != pid
		if want := c == "kube-controller-manager" || c == "kube-scheduler"; restarted != want {
			t.Errorf("%s restarted=%v, want %v", c, restarted, want)
		}
	}
	b, err := openBackup(f.root, res.Renew.Backup)
	if err != nil || b.State != api.BackupCommitted || b.Run != testRun {
		t.Errorf("backup %+v %v, want committed and tagged with the run", b, err)
	}
}

// --restart=all also restarts etcd and kube-apiserver, and still proves
// what they serve.
func TestRenewRestartAll(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.RSA, nil)
	etcd, apiserver := f.proc.pid("etcd"), f.proc.pid("kube-apiserver")
	req := request(api.Renew, cpServices...)
	req.Restart = api.RestartAll
	if res := f.agent().Handle(context.Background(), req); res.Outcome != api.Done {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	if f.proc.pid("etcd") == etcd || f.proc.pid("kube-apiserver") == apiserver {
		t.Error("etcd and kube-apiserver were not restarted")
	}
}

// etcd that keeps serving its old certificate fails the renewal: every file
// is put back, with the outcome saying so.
func TestRenewRestoresWhenAReloadIsNotProven(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	f.etcdStale = true
	before := tree(t, f.root)
	a := f.agent()
	a.Timeout = time.Second
	res := a.Handle(context.Background(), request(api.Renew, "etcd"))
	if res.Outcome != api.Restored || !strings.Contains(res.Error, "does not serve the new certificate") {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	if d := diff(before, tree(t, f.root)); len(d) > 0 {
		t.Errorf("not restored: %v", d)
	}
	if b, err := openBackup(f.root, res.Renew.Backup); err != nil || b.State != api.BackupRestored {
		t.Errorf("backup %+v %v, want restored", b, err)
	}
}

// An agent killed in the middle of a transaction (pod deleted with grace 0,
// node rebooted) leaves its journal in progress: the node's next
// transaction first puts every file back, so the node is never half new.
func TestInterruptedTransactionIsRestoredFirst(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	before := tree(t, root)
	a := newTestAgent(t, root)
	crashed := request(api.Renew)
	crashed.Run = "rc-00000000000000c3"
	tx, err := a.lockTxn(crashed)
	must(t, err)
	must(t, tx.start("renew"))
	must(t, tx.write(pki.File{Path: "etc/kubernetes/pki/apiserver.crt", Data: []byte("half"), Mode: 0o644}))
	must(t, tx.write(pki.File{Path: "etc/kubernetes/pki/apiserver.key", Data: []byte("written"), Mode: 0o600}))
	tx.lock.unlock() // the process died: the kernel drops its lock, nothing else happens

	res := a.Handle(context.Background(), request(api.RestoreInterrupted))
	if res.Outcome != api.Restored || !strings.Contains(res.Error, "had been interrupted") {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	if d := diff(before, tree(t, root)); len(d) > 0 {
		t.Errorf("not restored: %v", d)
	}
	if b, _ := openBackup(root, tx.b.Name); b.State != api.BackupRestored {
		t.Errorf("crashed backup is %s", b.State)
	}
}

// Two rotations never interleave on a node: while one holds the node's
// lock, another is refused at once with the holder named.
func TestNodeLockRefusesASecondRun(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	before := tree(t, root)
	a := newTestAgent(t, root)
	other := request(api.Renew)
	other.Run = "rc-00000000000000d4"
	tx, err := a.lockTxn(other)
	must(t, err)
	defer tx.end()
	res := a.Handle(context.Background(), request(api.Renew, "admin"))
	if res.Outcome != api.Busy || !strings.Contains(res.Error, "run rc-00000000000000d4") {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	in := a.Handle(context.Background(), request(api.Inspect, "admin")).Inspect
	if in == nil || !strings.Contains(strings.Join(in.Problems, " "), "another rotation is in progress on this node: run rc-00000000000000d4") {
		t.Errorf("inspect does not name the holder: %+v", in)
	}
	if d := diff(before, tree(t, root)); len(d) > 0 {
		t.Errorf("changed %v", d)
	}
}

// Files of other users keep their owner, group and mode when renewed, in
// the backup's record, and when restored.
func TestOwnerAndModeKept(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files another owner")
	}
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.RSA)
	files := []string{"etc/kubernetes/pki/etcd/server.crt", "etc/kubernetes/pki/etcd/server.key", "etc/kubernetes/admin.conf"}
	for i, p := range files {
		must(t, os.Chown(filepath.Join(root, p), 1000+i, 2000+i))
		must(t, os.Chmod(filepath.Join(root, p), 0o640))
	}
	a := newTestAgent(t, root)
	check := func(when string) {
		t.Helper()
		for i, p := range files {
			st, err := os.Stat(filepath.Join(root, p))
			must(t, err)
			s := st.Sys().(*syscall.Stat_t)
			if int(s.Uid) != 1000+i || int(s.Gid) != 2000+i || st.Mode().Perm() != 0o640 {
				t.Errorf("%s: /%s is %d:%d %v", when, p, s.Uid, s.Gid, st.Mode().Perm())
			}
		}
	}
	tx, err := a.lockTxn(request(api.Renew))
	must(t, err)
	must(t, tx.start("renew"))
	for _, p := range files {
		must(t, tx.write(pki.File{Path: p, Data: []byte("new"), Mode: 0o600}))
	}
	check("after writing")
	must(t, tx.b.restore())
	tx.end()
	check("after restoring")
}

// kubespray's layout (pki linked to ssl, absolute) is rotated in place.
func TestKubesprayLayoutRenews(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	pkitest.KubesprayLayout(t, root)
	a := newTestAgent(t, root)
	in := a.Handle(context.Background(), request(api.Inspect, "admin", "kube-apiserver"))
	if in.Error != "" || len(in.Inspect.Problems) > 0 {
		t.Fatalf("inspect: %s %v", in.Error, in.Inspect.Problems)
	}
	old := serialOf(t, root, "front-proxy-client")
	// Renew admin only: kube-apiserver's reload would need servers.
	if res := a.Handle(context.Background(), request(api.Renew, "admin")); res.Outcome != api.Done {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	tx, err := a.lockTxn(request(api.Renew))
	must(t, err)
	must(t, tx.start("renew"))
	must(t, tx.write(pki.File{Path: "etc/kubernetes/pki/front-proxy-client.crt", Data: []byte("x"), Mode: 0o644}))
	must(t, tx.b.restore())
	tx.end()
	if fi, err := os.Lstat(filepath.Join(root, pki.PKIDir)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("/etc/kubernetes/pki is no longer a link: %v", err)
	}
	if got := serialOf(t, root, "front-proxy-client"); got != old {
		t.Errorf("restore through the link: serial %s, want %s", got, old)
	}
}

// Each committed run prunes the backups of all but the newest runs: old
// private keys do not pile up.
func TestBackupsArePruned(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	a := newTestAgent(t, root)
	var names []string
	for i, run := range []string{"rc-0000000000000001", "rc-0000000000000002", "rc-0000000000000003", "rc-0000000000000004"} {
		req := request(api.Renew, "admin")
		req.Run, req.KeepBackups = run, 2
		now := time.Now().Add(time.Duration(i) * time.Minute)
		a.Now = func() time.Time { return now }
		res := a.Handle(context.Background(), req)
		if res.Outcome != api.Done {
			t.Fatal(res.Error)
		}
		names = append(names, res.Renew.Backup)
	}
	left, err := listBackups(root)
	must(t, err)
	if len(left) != 2 || left[0].Name != names[2] || left[1].Name != names[3] {
		var got []string
		for _, b := range left {
			got = append(got, b.Name)
		}
		t.Errorf("backups left %v, want the last two runs' %v", got, names[2:])
	}
}

// Rolling a run back puts back the files as they were before it, restarts
// what read them, and is itself a transaction that can be rolled back.
func TestRollbackRun(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	a := f.agent()
	first := request(api.Renew, cpServices...)
	first.Run = "rc-0000000000000001"
	if res := a.Handle(context.Background(), first); res.Outcome != api.Done {
		t.Fatal(res.Error)
	}
	afterFirst := tree(t, f.root)
	second := request(api.Renew, cpServices...)
	second.Run = "rc-0000000000000002"
	if res := a.Handle(context.Background(), second); res.Outcome != api.Done {
		t.Fatal(res.Error)
	}
	kcm := f.proc.pid("kube-controller-manager")
	rb := request(api.Rollback)
	rb.Run, rb.RollbackRun = "rc-0000000000000003", "rc-0000000000000002"
	res := a.Handle(context.Background(), rb)
	if res.Outcome != api.Done {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	if d := diff(afterFirst, tree(t, f.root)); len(d) > 0 {
		t.Errorf("rollback left %v different from before run 2", d)
	}
	if f.proc.pid("kube-controller-manager") == kcm {
		t.Error("kube-controller-manager was not restarted on its restored kubeconfig")
	}
	if !strings.Contains(strings.Join(res.Renew.Verified, " "), "apiserver serial "+serialOf(t, f.root, "apiserver")) {
		t.Errorf("the restored apiserver certificate was not verified: %v", res.Renew.Verified)
	}
	all, _ := listBackups(f.root)
	for _, b := range all {
		if b.Run == "rc-0000000000000002" && b.State != api.BackupRolledBack {
			t.Errorf("run 2's backup is %s, want rolled-back", b.State)
		}
	}
	// Rolling the same run back again finds nothing committed.
	if again := a.Handle(context.Background(), rb); again.Outcome != api.Unchanged {
		t.Errorf("second rollback: %s %s", again.Outcome, again.Error)
	}
}

// A rollback never puts back a certificate that has expired since.
func TestRollbackRefusesExpiredCertificates(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	a := newTestAgent(t, root)
	res := a.Handle(context.Background(), request(api.Renew, "admin"))
	if res.Outcome != api.Done {
		t.Fatal(res.Error)
	}
	after := tree(t, root)
	a.Now = func() time.Time { return time.Now().Add(400 * 24 * time.Hour) }
	rb := request(api.Rollback)
	rb.Run, rb.RollbackRun = "rc-0000000000000009", testRun
	r := a.Handle(context.Background(), rb)
	if r.Outcome != api.Unchanged || !strings.Contains(r.Error, "expired") {
		t.Fatalf("%s: %s", r.Outcome, r.Error)
	}
	if d := diff(after, tree(t, root)); len(d) > 0 {
		t.Errorf("changed %v", d)
	}
}

// A CA that expired (or is not valid yet) is refused with advice before
// anything is planned, instead of issuing certificates whose NotAfter lies
// before their NotBefore.
func TestExpiredCARefused(t *testing.T) {
	root := t.TempDir()
	n := pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	n.Start = time.Now().Add(-11 * 365 * 24 * time.Hour) // its ten years are over
	ca := n.NewCA(t, pki.FrontProxyCA, "front-proxy-ca")
	c, k := n.Leaf(t, ca, pkix.Name{CommonName: "front-proxy-client"}, nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	must(t, os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/front-proxy-client.crt"), c, 0o644))
	must(t, os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/front-proxy-client.key"), k, 0o600))
	before := tree(t, root)
	a := newTestAgent(t, root)
	in := a.Handle(context.Background(), request(api.Inspect, "kube-apiserver")).Inspect
	if in == nil || !strings.Contains(strings.Join(in.Problems, " "), "CA front-proxy-ca (/etc/kubernetes/pki/front-proxy-ca.crt) expired") ||
		!strings.Contains(strings.Join(in.Problems, " "), "this tool keeps CAs") {
		t.Fatalf("problems %+v", in)
	}
	if r := a.Handle(context.Background(), request(api.Renew, "kube-apiserver")); r.Outcome != api.Unchanged {
		t.Errorf("renew: %s %s", r.Outcome, r.Error)
	}
	if d := diff(before, tree(t, root)); len(d) > 0 {
		t.Errorf("changed %v", d)
	}
}

// status and --dry-run inspect through read-only pods: nothing is written,
// not even a probe file.
func TestReadOnlyInspectWritesNothing(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	before := treeAll(t, root)
	req := request(api.Inspect, append(cpServices, "kubelet")...)
	req.ReadOnly = true
	res := newTestAgent(t, root).Handle(context.Background(), req)
	if res.Outcome != api.Done || len(res.Inspect.Plan) == 0 {
		t.Fatalf("%s %s", res.Outcome, res.Error)
	}
	if after := treeAll(t, root); !equalTrees(before, after) {
		t.Errorf("a read-only inspection wrote: before %d entries, after %d", len(before), len(after))
	}
}

// treeAll lists every path below root, directories and hidden files too.
func treeAll(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	must(t, filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		out = append(out, p)
		return err
	}))
	return out
}

func equalTrees(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

// The keys made for a run whose signing failed are removed.
func TestDiscardPending(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	a := f.agent()
	if res := a.Handle(context.Background(), request(api.KubeletCSR)); res.Outcome != api.Done {
		t.Fatal(res.Error)
	}
	if !pki.Exists(f.root, pendingKeyPath(testRun, "kubelet-client")) {
		t.Fatal("no pending key")
	}
	if res := a.Handle(context.Background(), request(api.DiscardPending)); res.Outcome != api.Done {
		t.Fatal(res.Error)
	}
	if pki.Exists(f.root, pendingKeyPath(testRun, "kubelet-client")) {
		t.Error("pending key left")
	}
}

// The pod's main process, stopped, waits for a running action to end
// (its transaction always runs to an end state); idle, it exits on its own.
func TestServeWaitsForRunningActionsAndEndsWhenIdle(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "a1.request"), []byte("{}"), 0o600))
	release, err := hold(filepath.Join(dir, "a1.request"))
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ServeOptions{ResultsDir: dir, Drain: 10 * time.Second}) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Serve ended while an action ran: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	release()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not end after the action ended")
	}

	var log bytes.Buffer
	start := time.Now()
	must(t, Serve(context.Background(), ServeOptions{ResultsDir: t.TempDir(), Idle: time.Second, Log: &log}))
	if d := time.Since(start); d > 5*time.Second || !strings.Contains(log.String(), "the plugin is gone") {
		t.Errorf("idle exit after %s: %q", d, log.String())
	}
}

// With other control planes behind a load balancer, --restart=all first
// drains kube-apiserver (SIGTERM: it stops accepting connections, so the
// load balancer sends them elsewhere), then stops etcd gracefully (a leader
// hands over its leadership), then kills kube-apiserver.
func TestRenewRestartAllDrainsTheAPIServerFirst(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	req := request(api.Renew, cpServices...)
	req.Restart, req.Graceful = api.RestartAll, true
	res := f.agent().Handle(context.Background(), req)
	if res.Outcome != api.Done {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	want := []string{"kube-apiserver terminated", "etcd terminated", "kube-apiserver killed"}
	if got := strings.Join(f.signals[:3], ", "); got != strings.Join(want, ", ") {
		t.Errorf("signals %v, want first %v", f.signals, want)
	}
	if !strings.Contains(strings.Join(res.Renew.Verified, " "), "kube-apiserver stopped accepting connections") {
		t.Errorf("verified %v", res.Renew.Verified)
	}
	// Without other control planes it is killed at once (seconds of
	// outage instead of a drain).
	f2 := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	req.Graceful = false
	if res := f2.agent().Handle(context.Background(), req); res.Outcome != api.Done || f2.signals[0] != "etcd killed" {
		t.Errorf("%s %s, signals %v", res.Outcome, res.Error, f2.signals)
	}
}

// A kube-controller-manager or kube-scheduler that held its leader lease
// exits when its kube-apiserver goes away, and the kubelet starts it again:
// that new process already read the new kubeconfig. Signalling it once more
// would only put it into the kubelet's crash-loop back-off (10 s, then 20 s,
// measured in docs/benchmarks.md), so the agent waits for it instead.
func TestRenewRestartAllDoesNotRestartWhatRestartedOnItsOwn(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	leaders := []string{"kube-controller-manager", "kube-scheduler"}
	var once sync.Once
	f.onAPIServerDown = func() {
		once.Do(func() {
			for _, c := range leaders {
				must(t, f.proc.restart(c))
			}
		})
	}
	req := request(api.Renew, cpServices...)
	req.Restart, req.Graceful = api.RestartAll, true
	res := f.agent().Handle(context.Background(), req)
	if res.Outcome != api.Done {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	for _, c := range leaders {
		if n := f.restartsOf(c); n != 1 {
			t.Errorf("%s started %d times, want once (on its own)", c, n)
		}
		for _, s := range f.signals {
			if strings.HasPrefix(s, c+" ") {
				t.Errorf("%s was signalled (%s) although it had started after the files were written", c, s)
			}
		}
	}
	if got := strings.Join(res.Renew.Verified, "\n"); !strings.Contains(got, "kube-scheduler started again on its own") {
		t.Errorf("verified %v", res.Renew.Verified)
	}
	// Still reported as replaced: the plugin releases a stopped leader's lease.
	for _, c := range leaders {
		found := false
		for _, r := range res.Renew.Restarted {
			found = found || (r.Component == c && r.NewPID == f.proc.pid(c))
		}
		if !found {
			t.Errorf("%s not reported as replaced: %+v", c, res.Renew.Restarted)
		}
	}
	// One that did not restart on its own is still restarted.
	f2 := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	if res := f2.agent().Handle(context.Background(), req); res.Outcome != api.Done || f2.restartsOf("kube-scheduler") != 1 {
		t.Errorf("%s %s, kube-scheduler started %d times", res.Outcome, res.Error, f2.restartsOf("kube-scheduler"))
	}
}
