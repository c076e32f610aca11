//go:build e2e

package e2e

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// caIDs reads the CA ids a node's kubeadm CA file holds, in order.
func (e *env) caIDs(node string, ca pki.CA) []string {
	e.t.Helper()
	data, err := e.cluster.Exec(context.Background(), node, nil, "cat", "/"+ca.CertFile)
	if err != nil {
		e.t.Fatalf("node %s: cat /%s: %v", node, ca.CertFile, err)
	}
	return bundleIDs(e.t, data)
}

func bundleIDs(t interface{ Fatalf(string, ...any) }, data []byte) []string {
	ids, err := pki.BundleIDs(data)
	if err != nil {
		t.Fatalf("CA bundle: %v", err)
	}
	return ids
}

// nodeCAs are the kubeadm CAs a node holds.
func (e *env) nodeCAs(node string) []pki.CA {
	if slices.Contains(e.cps, node) {
		return pki.CAs
	}
	return []pki.CA{pki.ClusterCA}
}

// caFiles maps node -> kubeadm CA name -> the ids its CA file holds.
func (e *env) caFiles() map[string]map[string][]string {
	out := map[string]map[string][]string{}
	for _, n := range e.nodes() {
		out[n] = map[string][]string{}
		for _, ca := range e.nodeCAs(n) {
			out[n][ca.Name] = e.caIDs(n, ca)
		}
	}
	return out
}

// stagedAuthority reads the new cluster CA a control plane staged: the
// test's own proof that the cluster accepts (or refuses) what it signs.
func (e *env) stagedAuthority(node string) *pki.Authority {
	e.t.Helper()
	st := pki.Staged(pki.ClusterCA)
	read := func(rel string) []byte {
		data, err := e.cluster.Exec(context.Background(), node, nil, "cat", "/"+rel)
		if err != nil {
			e.t.Fatalf("node %s: cat /%s: %v", node, rel, err)
		}
		return data
	}
	cert, err := pki.ParseCertificatePEM(read(st.CertFile))
	if err != nil {
		e.t.Fatal(err)
	}
	key, err := pki.ParsePrivateKeyPEM(read(st.KeyFile))
	if err != nil {
		e.t.Fatal(err)
	}
	return &pki.Authority{CA: pki.ClusterCA, Cert: cert, Key: key}
}

// apiAccepts asks the API server, through the kind endpoint, for /api with
// a client certificate of ca: authenticated (403 for this unknown user) or
// refused (401).
func (e *env) apiAccepts(ca *pki.Authority) bool {
	e.t.Helper()
	key, err := pki.NewECDSAKey()
	if err != nil {
		e.t.Fatal(err)
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "e2e:ca-probe"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	issued, err := ca.Issue(tmpl, key.Public(), time.Hour, time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(e.config)
	cfg.CertData, cfg.KeyData = issued.CertPEM, issued.KeyPEM
	// Trust whatever the cluster serves: the probe is about the client side.
	cfg.Insecure, cfg.CAData, cfg.CAFile = true, nil, ""
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		err = client.Discovery().RESTClient().Get().AbsPath("/api").Do(ctx).Error()
		switch {
		case apierrors.IsForbidden(err) || err == nil:
			return true
		case apierrors.IsUnauthorized(err):
			return false
		}
		if ctx.Err() != nil {
			e.t.Fatalf("probing the API with a certificate of CA %s: %v", pki.CAID(ca.Cert), err)
		}
		time.Sleep(time.Second)
	}
}

// checkTrustBoth judges the trust phase from outside: every node's CA
// files hold the old CA then the new one; ca status finds every trust
// point of every node holding exactly both (kube-controller-manager still
// signing with the old one) and calls it consistent; kube-root-ca.crt and
// cluster-info carry both; the API server authenticates a client
// certificate of the new CA.
func (e *env) checkTrustBoth(old map[string]map[string][]string, next *pki.Authority) {
	e.t.Helper()
	newIDs := map[string]string{}
	for _, n := range e.nodes() {
		for _, ca := range e.nodeCAs(n) {
			got := e.caIDs(n, ca)
			if len(got) != 2 || got[0] != old[n][ca.Name][0] {
				e.t.Errorf("node %s: /%s holds %v, want the old CA %v and the new one", n, ca.CertFile, got, old[n][ca.Name])
				continue
			}
			if prev, ok := newIDs[ca.Name]; ok && prev != got[1] {
				e.t.Errorf("node %s: new CA %s is %s, another node has %s", n, ca.Name, got[1], prev)
			}
			newIDs[ca.Name] = got[1]
		}
	}
	if newIDs["ca"] != pki.CAID(next.Cert) {
		e.t.Errorf("the nodes trust new cluster CA %s, the staged one is %s", newIDs["ca"], pki.CAID(next.Cert))
	}
	out := e.mustPlugin("ca", "status", "-o", "json")
	var rep report.CAStatusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		e.t.Fatalf("ca status -o json: %v", err)
	}
	if !rep.Consistent || len(rep.Errors) > 0 {
		e.t.Errorf("ca status: consistent %v findings %q errors %v", rep.Consistent, rep.Findings, rep.Errors)
	}
	for _, tp := range rep.TrustPoints {
		want := []string{old[tp.Node][tp.CA][0], newIDs[tp.CA]}
		if !slices.Equal(tp.CAs, want) {
			e.t.Errorf("node %s: %s %s (%s) trusts %v, want %v", tp.Node, tp.Reader, tp.Setting, tp.Path, tp.CAs, want)
		}
	}
	for _, s := range rep.Signers {
		if !slices.Equal(s.CAs, []string{old[s.Node][s.CA][0]}) || !strings.HasSuffix(s.Path, "/ca-signer.crt") {
			e.t.Errorf("node %s: %s signs with %v from %s, want the old CA alone from ca-signer.crt", s.Node, s.Reader, s.CAs, s.Path)
		}
	}
	ctx := context.Background()
	want := []string{old[e.cps[0]]["ca"][0], newIDs["ca"]}
	root, err := e.client.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if got := bundleIDs(e.t, []byte(root.Data["ca.crt"])); !slices.Equal(got, want) {
		e.t.Errorf("kube-root-ca.crt in default holds %v, want %v", got, want)
	}
	info, err := e.client.CoreV1().ConfigMaps("kube-public").Get(ctx, "cluster-info", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	cfg, err := clientcmd.Load([]byte(info.Data["kubeconfig"]))
	if err != nil {
		e.t.Fatal(err)
	}
	for name, c := range cfg.Clusters {
		if got := bundleIDs(e.t, c.CertificateAuthorityData); !slices.Equal(got, want) {
			e.t.Errorf("cluster-info cluster %s trusts %v, want %v", name, got, want)
		}
	}
	if !e.apiAccepts(next) {
		e.t.Error("the API server refuses a client certificate of the new CA after the trust phase")
	}
}

// caPrepare runs the first phase and judges it: the new CA staged on every
// control plane (the same), no CA file changed, and the API server still
// refusing a certificate of the new CA (so the probe can fail). It returns
// the CA files before and the new cluster CA.
func (e *env) caPrepare() (map[string]map[string][]string, *pki.Authority, time.Duration) {
	e.t.Helper()
	old := e.caFiles()
	start := time.Now()
	e.mustPlugin("ca", "prepare")
	took := time.Since(start)
	next := e.stagedAuthority(e.cps[0])
	for _, cp := range e.cps[1:] {
		if got := e.stagedAuthority(cp); !got.Cert.Equal(next.Cert) || !pki.SamePublicKey(got.Key.Public(), next.Key.Public()) {
			e.t.Errorf("control plane %s staged another new CA than %s", cp, e.cps[0])
		}
	}
	if after := e.caFiles(); !equalCAFiles(after, old) {
		e.t.Errorf("prepare changed CA files: %v -> %v", old, after)
	}
	if e.apiAccepts(next) {
		e.t.Fatal("the API server accepts a certificate of the new CA before the trust phase: the probe proves nothing")
	}
	return old, next, took
}

// caTrust runs the trust phase and judges it (checkTrustBoth).
func (e *env) caTrust(old map[string]map[string][]string, next *pki.Authority) time.Duration {
	e.t.Helper()
	start := time.Now()
	e.mustPlugin("ca", "trust")
	took := time.Since(start)
	e.checkTrustBoth(old, next)
	return took
}

func equalCAFiles(a, b map[string]map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for n, m := range a {
		for ca, ids := range m {
			if !slices.Equal(ids, b[n][ca]) {
				return false
			}
		}
	}
	return true
}

// caRollback undoes the rotation and judges it: every CA file as before,
// the API refusing the new CA again, the staged CAs and the record gone.
func (e *env) caRollback(old map[string]map[string][]string, next *pki.Authority) {
	e.t.Helper()
	e.mustPlugin("ca", "rollback")
	if after := e.caFiles(); !equalCAFiles(after, old) {
		e.t.Errorf("after ca rollback the CA files hold %v, want %v", after, old)
	}
	if e.apiAccepts(next) {
		e.t.Error("the API server still accepts a certificate of the new CA after ca rollback")
	}
	for _, cp := range e.cps {
		if out, err := e.cluster.Exec(context.Background(), cp, nil, "ls", "/"+pki.StagingDir); err == nil {
			e.t.Errorf("node %s: %s left behind: %s", cp, pki.StagingDir, out)
		}
	}
	if _, err := e.client.CoreV1().ConfigMaps("kube-system").Get(context.Background(), "rotate-certs-ca", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		e.t.Errorf("the CA rotation's record is still there: %v", err)
	}
	e.checkCAStatus()
}

// pollAPIBoth is pollAPI for a CA rotation: an anonymous client that
// trusts the old and the new cluster CA, so it judges the API server's
// availability, not which CA it presents. It reads /version, a request
// served like any other: /readyz answers 500 ("shutdown failed") on
// purpose while a kube-apiserver drains, for load balancers to stop
// sending it new connections, and the load balancer's connections opened
// before keep reaching it until it closes them.
func (e *env) pollAPIBoth(next *pki.Authority) (failures *atomic.Int64, stop func()) {
	e.t.Helper()
	cfg := rest.AnonymousClientConfig(e.config)
	bundle, err := pki.MergeCABundles(e.config.CAData, pki.EncodeCertPEM(next.Cert))
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.CAData = bundle
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.pollPath(client, "/version")
}

// useKubeconfig makes the test and the plugin use the kubeconfig at path
// from now on: it replaces the cluster's kubeconfig file (under its
// kind-<name> context) and the test's clients. It returns the previous
// file's content.
func (e *env) useKubeconfig(path string) []byte {
	e.t.Helper()
	prev, err := os.ReadFile(e.cluster.KubeconfigPath())
	if err != nil {
		e.t.Fatal(err)
	}
	old, err := clientcmd.Load(prev)
	if err != nil {
		e.t.Fatal(err)
	}
	next, err := clientcmd.LoadFromFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	name := old.CurrentContext
	ctx := next.Contexts[next.CurrentContext]
	out := clientcmdapi.NewConfig()
	out.Clusters[name] = next.Clusters[ctx.Cluster]
	out.AuthInfos[name] = next.AuthInfos[ctx.AuthInfo]
	out.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	out.CurrentContext = name
	if err := clientcmd.WriteToFile(*out, e.cluster.KubeconfigPath()); err != nil {
		e.t.Fatal(err)
	}
	e.client = e.refreshedClient()
	return prev
}

// kubeconfigAccepted tells whether the API server authenticates the
// credentials of a kubeconfig (trusting any server certificate: the
// question is the client's).
func (e *env) kubeconfigAccepted(data []byte) bool {
	e.t.Helper()
	cc, err := clientcmd.NewClientConfigFromBytes(data)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg, err := cc.ClientConfig()
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Insecure, cfg.CAData, cfg.CAFile = true, nil, ""
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil && !apierrors.IsUnauthorized(err) {
		e.t.Fatalf("listing nodes: %v", err)
	}
	return err == nil
}

// caSwitchAndFinish runs the last two phases after caPrepareAndTrust and
// judges them: after switch every certificate on every node is signed by
// the new CAs (ca status, by signature) and the kubeconfig the switch wrote
// works; after finish every CA file and trust point holds the new CA
// alone, kube-root-ca.crt too, the old admin kubeconfig is refused and the
// new one accepted.
func (e *env) caSwitchAndFinish(old map[string]map[string][]string) (switchTime, finishTime time.Duration) {
	e.t.Helper()
	newKubeconfig := filepath.Join(e.t.TempDir(), "admin-new.conf")
	start := time.Now()
	// Interrupted while the second control plane switches, then resumed
	// with the kubeconfig the interrupted run wrote before any switch.
	cp := e.cps[len(e.cps)-1]
	prev, err := os.ReadFile(e.cluster.KubeconfigPath())
	if err != nil {
		e.t.Fatal(err)
	}
	e.interruptCAPhase(cp, "node "+cp+": the new CAs sign", "ca-switch", "ca", "switch", "--write-kubeconfig", newKubeconfig)
	e.mustPlugin("ca", "switch", "--write-kubeconfig", newKubeconfig)
	switchTime = time.Since(start)
	e.useKubeconfig(newKubeconfig)
	newIDs := map[string]string{}
	for _, n := range e.nodes() {
		for _, ca := range e.nodeCAs(n) {
			got := e.caIDs(n, ca)
			if !slices.Contains(e.cps, n) {
				// A worker's CA file is only trusted: its order stays.
				if len(got) != 2 || got[0] != old[n][ca.Name][0] {
					e.t.Errorf("after switch node %s: /%s holds %v, want the old CA %v and the new one", n, ca.CertFile, got, old[n][ca.Name])
				}
				continue
			}
			if len(got) != 2 || got[1] != old[n][ca.Name][0] {
				e.t.Errorf("after switch node %s: /%s holds %v, want the new CA first (it signs), then the old %v", n, ca.CertFile, got, old[n][ca.Name])
			}
			if len(got) > 0 {
				newIDs[ca.Name] = got[0]
			}
		}
	}
	rep := e.caStatusJSON()
	for _, c := range rep.Certificates {
		if c.Missing || c.Issuer == "self-signed" {
			continue
		}
		if want := newIDs[c.CA]; c.Issuer != want {
			e.t.Errorf("after switch node %s: %s is signed by %s, want the new %s %s", c.Node, c.Name, c.Issuer, c.CA, want)
		}
	}
	if !e.kubeconfigAccepted(prev) {
		e.t.Error("after switch the old admin kubeconfig is refused: the old CA must stay trusted until finish")
	}
	// kube-apiserver and etcd serve the re-issued certificates (TLS).
	e.checkServes(e.snapshots())

	start = time.Now()
	e.mustPlugin("ca", "finish")
	finishTime = time.Since(start)
	for _, n := range e.nodes() {
		for _, ca := range e.nodeCAs(n) {
			if got := e.caIDs(n, ca); len(got) != 1 || got[0] != newIDs[ca.Name] {
				e.t.Errorf("after finish node %s: /%s holds %v, want the new CA %s alone", n, ca.CertFile, got, newIDs[ca.Name])
			}
		}
	}
	rep = e.caStatusJSON()
	if !rep.Consistent {
		e.t.Errorf("after finish ca status is not consistent: %q", rep.Findings)
	}
	for _, tp := range append(append([]report.TrustPoint{}, rep.TrustPoints...), rep.Signers...) {
		if !slices.Equal(tp.CAs, []string{newIDs[tp.CA]}) {
			e.t.Errorf("after finish node %s: %s %s (%s) trusts %v, want the new CA alone", tp.Node, tp.Reader, tp.Setting, tp.Path, tp.CAs)
		}
	}
	root, err := e.client.CoreV1().ConfigMaps("default").Get(context.Background(), "kube-root-ca.crt", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if got := bundleIDs(e.t, []byte(root.Data["ca.crt"])); !slices.Equal(got, []string{newIDs["ca"]}) {
		e.t.Errorf("after finish kube-root-ca.crt holds %v", got)
	}
	if e.kubeconfigAccepted(prev) {
		e.t.Error("after finish the old admin kubeconfig is still accepted")
	}
	data, err := os.ReadFile(newKubeconfig)
	if err != nil {
		e.t.Fatal(err)
	}
	if !e.kubeconfigAccepted(data) {
		e.t.Error("after finish the kubeconfig the switch wrote is refused")
	}
	if _, err := e.client.CoreV1().ConfigMaps("kube-system").Get(context.Background(), "rotate-certs-ca", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		e.t.Errorf("the CA rotation's record is still there: %v", err)
	}
	return switchTime, finishTime
}

func (e *env) caStatusJSON() *report.CAStatusReport {
	e.t.Helper()
	out := e.mustPlugin("ca", "status", "-o", "json")
	var rep report.CAStatusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		e.t.Fatalf("ca status -o json: %v", err)
	}
	return &rep
}

// interruptCAPhase interrupts a CA rotation phase while node is inside a
// transaction of action, and checks the plugin said how to resume, no
// agent pod stays and every node is Ready.
func (e *env) interruptCAPhase(node, trigger, action string, args ...string) {
	e.t.Helper()
	stderr, err := e.pluginInterrupted(trigger, e.inTransaction(node, action), args...)
	if err == nil {
		e.t.Fatalf("the interrupted %s exited 0", strings.Join(args, " "))
	}
	if !strings.Contains(stderr, "run the same command again to resume") {
		e.t.Errorf("the interrupted %s did not say how to resume", strings.Join(args, " "))
	}
	if slices.Contains(args, "switch") {
		e.useKubeconfig(args[len(args)-1])
	}
	e.waitNoAgentPods(3 * time.Minute)
	e.waitNodesReady(3 * time.Minute)
}

// inClusterProbe runs an in-cluster API client on a worker: a Deployment in
// kube-system (so the CA rotation restarts it when it must read the CA
// anew) of the pod network's image in its -probe-api mode, on the pod
// network, with the pod network's ServiceAccount, reading /version through
// the kubernetes Service every 200 ms and appending each failed request to
// a file on the node. failures counts them (from every pod the Deployment
// ran); stop removes it.
func (e *env) inClusterProbe() (failures func() (int, string), stop func()) {
	e.t.Helper()
	ctx := context.Background()
	node := e.workers[0]
	ds, err := e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "e2e-cni", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	const name, dir = "api-probe", "/var/log/rotate-certs-api-probe"
	labels := map[string]string{"app": name}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: ds.Spec.Template.Spec.ServiceAccountName,
					NodeSelector:       map[string]string{"kubernetes.io/hostname": node},
					Containers: []corev1.Container{{
						Name: name, Image: ds.Spec.Template.Spec.Containers[0].Image, ImagePullPolicy: corev1.PullNever,
						Args:         []string{"-probe-api", "200ms", "-probe-log", "/probe/failures.log"},
						Env:          []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
						VolumeMounts: []corev1.VolumeMount{{Name: "probe", MountPath: "/probe"}},
					}},
					Volumes: []corev1.Volume{{Name: "probe", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}}},
				},
			},
		},
	}
	if _, err := e.client.AppsV1().Deployments("kube-system").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	read := func() string {
		out, _ := e.cluster.Exec(ctx, node, nil, "sh", "-c", "cat "+dir+"/failures.log 2>/dev/null || true")
		return string(out)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(read(), " START ") {
		if time.Now().After(deadline) {
			e.t.Fatalf("the in-cluster probe did not start: %q", read())
		}
		time.Sleep(time.Second)
	}
	failures = func() (int, string) {
		log := read()
		return strings.Count(log, " FAIL "), log
	}
	stop = func() {
		_ = e.client.AppsV1().Deployments("kube-system").Delete(ctx, name, metav1.DeleteOptions{})
	}
	return failures, stop
}

// watchCluster watches, every second while the rotation runs, that every
// node stays Ready, with a ServiceAccount token (which a CA rotation does
// not touch) and both CAs trusted, through the load balancer. It records
// the pods that exist at its start; check, at the end, says which node
// was ever seen not Ready, and which of those pods is neither running nor
// replaced by its controller (a bare pod that vanished, a pod not
// running), with every pod of the cluster Running and Ready.
func (e *env) watchCluster(next *pki.Authority) (check func() []string) {
	e.t.Helper()
	ctx := context.Background()
	const name = "e2e-ca-watcher"
	ns := "kube-system"
	_, err := e.client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err == nil {
		_, err = e.client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}}, metav1.CreateOptions{})
	}
	if err == nil {
		_, err = e.client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name + "-nodes"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list"}}}}, metav1.CreateOptions{})
	}
	if err == nil {
		_, err = e.client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name + "-nodes"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name + "-nodes"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}}, metav1.CreateOptions{})
	}
	if err != nil {
		e.t.Fatal(err)
	}
	tok, err := e.client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(e.config)
	cfg.BearerToken = tok.Status.Token
	if cfg.CAData, err = pki.MergeCABundles(e.config.CAData, pki.EncodeCertPEM(next.Cert)); err != nil {
		e.t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	var mu sync.Mutex
	var problems []string
	seen := map[string]bool{}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(time.Second):
			}
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			nodes, err := client.CoreV1().Nodes().List(rctx, metav1.ListOptions{})
			cancel()
			if err != nil {
				continue // the API's availability is the pollers' business
			}
			for _, n := range nodes.Items {
				for _, c := range n.Status.Conditions {
					if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue && !seen[n.Name] {
						mu.Lock()
						seen[n.Name] = true
						problems = append(problems, fmt.Sprintf("node %s was %s at %s: %s", n.Name, c.Status, time.Now().UTC().Format(time.RFC3339), c.Message))
						mu.Unlock()
					}
				}
			}
		}
	}()
	return func() []string {
		close(quit)
		<-done
		out := append([]string{}, problems...)
		deadline := time.Now().Add(3 * time.Minute)
		for {
			var now []string
			after, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			if err != nil {
				now = append(now, fmt.Sprintf("listing pods: %v", err))
			} else {
				alive := map[string]bool{}
				for _, p := range after.Items {
					alive[p.Namespace+"/"+p.Name] = true
					if p.Status.Phase != corev1.PodSucceeded && !(p.Status.Phase == corev1.PodRunning && podIsReady(&p)) && p.DeletionTimestamp == nil {
						now = append(now, fmt.Sprintf("pod %s/%s is %s, not running and ready", p.Namespace, p.Name, p.Status.Phase))
					}
				}
				for _, p := range pods.Items {
					// The plugin's own agent pods come and go, and a pod
					// already being deleted at the start was not the
					// rotation's to keep.
					if p.Labels["app.kubernetes.io/name"] == "rotate-certs-agent" || p.DeletionTimestamp != nil {
						continue
					}
					if !alive[p.Namespace+"/"+p.Name] && len(p.OwnerReferences) == 0 {
						now = append(now, fmt.Sprintf("pod %s/%s, which has no controller, is gone", p.Namespace, p.Name))
					}
				}
			}
			if len(now) == 0 || time.Now().After(deadline) {
				return append(out, now...)
			}
			time.Sleep(2 * time.Second)
		}
	}
}
