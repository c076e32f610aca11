package orchestrator

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// testCA makes a self-signed CA and returns its PEM and id.
func testCA(t *testing.T, cn string) (pemData []byte, id string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a, _, err := pki.NewCA(pki.ClusterCA, cn, key.Public(), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return pki.EncodeCertPEM(a.Cert), pki.CAID(a.Cert)
}

// clusterInfo is kubeadm's cluster-info with caData as its cluster's CA.
func clusterInfo(t *testing.T, caData []byte) *corev1.ConfigMap {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[""] = &clientcmdapi.Cluster{Server: "https://192.0.2.1:6443", CertificateAuthorityData: caData}
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-public", Name: "cluster-info"},
		Data: map[string]string{"kubeconfig": string(data), "jws-kubeconfig-abcdef": "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..sig"}}
}

// countActions counts the actions with verb on resource.
func countActions(c *fake.Clientset, verb, resource string) int {
	n := 0
	for _, a := range c.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource {
			n++
		}
	}
	return n
}

func TestSetClusterInfoCASetsTheBundleAndKeepsTheSignatures(t *testing.T) {
	oldPEM, _ := testCA(t, "kubernetes")
	newPEM, _ := testCA(t, "kubernetes-next")
	bundle := append(append([]byte{}, oldPEM...), newPEM...)
	before := clusterInfo(t, oldPEM)
	c := fake.NewClientset(before)
	r := &Runner{Client: c, Timeout: time.Second, Poll: 10 * time.Millisecond}

	changed, err := r.setClusterInfoCA(context.Background(), bundle)
	if err != nil || !changed {
		t.Fatalf("changed %v, err %v; want a change", changed, err)
	}
	cm, err := c.CoreV1().ConfigMaps("kube-public").Get(context.Background(), "cluster-info", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["jws-kubeconfig-abcdef"] != before.Data["jws-kubeconfig-abcdef"] {
		t.Errorf("the signature was changed or dropped: %q", cm.Data["jws-kubeconfig-abcdef"])
	}
	cfg, err := clientcmd.Load([]byte(cm.Data["kubeconfig"]))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Clusters) != 1 || cfg.Clusters[""] == nil {
		t.Fatalf("clusters %v, want the one cluster", cfg.Clusters)
	}
	if got := cfg.Clusters[""]; !bytes.Equal(got.CertificateAuthorityData, bundle) || got.Server != "https://192.0.2.1:6443" {
		t.Errorf("cluster %q with CA data %q, want the bundle and the server kept", got.Server, got.CertificateAuthorityData)
	}

	// Again: nothing to change, nothing written.
	updates := countActions(c, "update", "configmaps")
	if changed, err := r.setClusterInfoCA(context.Background(), bundle); err != nil || changed {
		t.Fatalf("second time: changed %v, err %v; want no change", changed, err)
	}
	if n := countActions(c, "update", "configmaps"); n != updates {
		t.Errorf("%d more updates, want none", n-updates)
	}
}

func TestSetClusterInfoCARetriesOnConflict(t *testing.T) {
	oldPEM, _ := testCA(t, "kubernetes")
	newPEM, _ := testCA(t, "kubernetes-next")
	c := fake.NewClientset(clusterInfo(t, oldPEM))
	conflicts := 1
	c.PrependReactor("update", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts > 0 {
			conflicts--
			return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, "cluster-info", errors.New("changed"))
		}
		return false, nil, nil
	})
	r := &Runner{Client: c, Timeout: time.Second}
	if changed, err := r.setClusterInfoCA(context.Background(), newPEM); err != nil || !changed {
		t.Fatalf("changed %v, err %v; want a change after one conflict", changed, err)
	}
	if n := countActions(c, "update", "configmaps"); n != 2 {
		t.Errorf("%d updates, want 2 (one conflict, one retry)", n)
	}
}

func TestSetClusterInfoCARefuses(t *testing.T) {
	caPEM, _ := testCA(t, "kubernetes")
	noCA := clusterInfo(t, nil)
	garbled := clusterInfo(t, caPEM)
	garbled.Data["kubeconfig"] = "clusters: [this is not: a kubeconfig"
	for name, tc := range map[string]struct {
		cm     *corev1.ConfigMap
		bundle []byte
		want   string
	}{
		"unparseable kubeconfig": {garbled, caPEM, "is not a kubeconfig"},
		"cluster without CA":     {noCA, caPEM, "has no certificate-authority-data"},
		"empty bundle":           {clusterInfo(t, caPEM), []byte("\n"), "empty"},
		"not PEM":                {clusterInfo(t, caPEM), []byte("hello"), "CA bundle"},
	} {
		t.Run(name, func(t *testing.T) {
			c := fake.NewClientset(tc.cm)
			r := &Runner{Client: c, Timeout: time.Second}
			changed, err := r.setClusterInfoCA(context.Background(), tc.bundle)
			if err == nil || !strings.Contains(err.Error(), tc.want) || changed {
				t.Errorf("changed %v, err %v; want an error with %q", changed, err, tc.want)
			}
			if n := countActions(c, "update", "configmaps"); n != 0 {
				t.Errorf("%d updates, want none", n)
			}
		})
	}
}

func TestSetClusterInfoCAWithoutClusterInfo(t *testing.T) {
	caPEM, _ := testCA(t, "kubernetes")
	c := fake.NewClientset()
	r := &Runner{Client: c, Timeout: time.Second}
	if changed, err := r.setClusterInfoCA(context.Background(), caPEM); err != nil || changed {
		t.Errorf("changed %v, err %v; want no change and no error", changed, err)
	}
	if n := countActions(c, "update", "configmaps") + countActions(c, "create", "configmaps"); n != 0 {
		t.Errorf("%d writes, want none", n)
	}
}

// rootCACluster has namespaces whose kube-root-ca.crt hold what holds says
// (nil: no ConfigMap); namespace "going" is being deleted and holds oldPEM.
func rootCACluster(holds map[string][]byte, oldPEM []byte) *fake.Clientset {
	var objs []runtime.Object
	for ns, data := range holds {
		objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}})
		if data != nil {
			objs = append(objs, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(data)}})
		}
	}
	objs = append(objs,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "going"}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceTerminating}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "going", Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(oldPEM)}})
	return fake.NewClientset(objs...)
}

func TestWaitRootCAPublished(t *testing.T) {
	oldPEM, oldID := testCA(t, "kubernetes")
	newPEM, newID := testCA(t, "kubernetes-next")
	bundle := append(append([]byte{}, oldPEM...), newPEM...)
	reversed := append(append(append([]byte{}, newPEM...), oldPEM...), oldPEM...)
	want := []string{newID, oldID}

	t.Run("all published", func(t *testing.T) {
		c := rootCACluster(map[string][]byte{"default": bundle, "kube-system": reversed, "app": bundle}, oldPEM)
		// A ConfigMap of another name holding the old CA is not looked at.
		if _, err := c.CoreV1().ConfigMaps("app").Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "other"},
			Data: map[string]string{"ca.crt": string(oldPEM)}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		r := &Runner{Client: c, Timeout: time.Second, Poll: 10 * time.Millisecond}
		if err := r.waitRootCAPublished(context.Background(), want); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("published later", func(t *testing.T) {
		c := rootCACluster(map[string][]byte{"default": bundle, "app": oldPEM}, oldPEM)
		lists := 0
		c.PrependReactor("list", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
			if lists++; lists == 3 {
				cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(bundle)}}
				if err := c.Tracker().Update(corev1.SchemeGroupVersion.WithResource("configmaps"), cm, "app"); err != nil {
					t.Error(err)
				}
			}
			return false, nil, nil
		})
		r := &Runner{Client: c, Timeout: 5 * time.Second, Poll: 10 * time.Millisecond}
		if err := r.waitRootCAPublished(context.Background(), want); err != nil {
			t.Fatal(err)
		}
		if lists < 3 {
			t.Errorf("done after %d polls, before the ConfigMap held the bundle", lists)
		}
	})
	t.Run("one lacks the new CA", func(t *testing.T) {
		c := rootCACluster(map[string][]byte{"default": bundle, "app": oldPEM, "fresh": nil}, oldPEM)
		r := &Runner{Client: c, Timeout: 100 * time.Millisecond, Poll: 10 * time.Millisecond}
		err := r.waitRootCAPublished(context.Background(), want)
		if err == nil {
			t.Fatal("no error, want the namespaces that lack the new CA")
		}
		msg := err.Error()
		for _, s := range []string{"app (holds " + oldID + ")", "fresh (no ConfigMap kube-root-ca.crt)", "root-ca-cert-publisher", "--root-ca-file", "2 namespace(s)"} {
			if !strings.Contains(msg, s) {
				t.Errorf("error %q lacks %q", msg, s)
			}
		}
		for _, s := range []string{"default", "going"} {
			if strings.Contains(msg, s) {
				t.Errorf("error %q names namespace %s, which holds the bundle or is being deleted", msg, s)
			}
		}
	})
	t.Run("one holds more", func(t *testing.T) {
		extraPEM, _ := testCA(t, "someone-else")
		c := rootCACluster(map[string][]byte{"default": append(append([]byte{}, bundle...), extraPEM...)}, oldPEM)
		r := &Runner{Client: c, Timeout: 50 * time.Millisecond, Poll: 10 * time.Millisecond}
		if err := r.waitRootCAPublished(context.Background(), want); err == nil || !strings.Contains(err.Error(), "default (holds ") {
			t.Errorf("err %v, want namespace default named: it holds a third CA", err)
		}
	})
}

// workloadCluster is a fake cluster whose workload controllers finish a
// rollout the moment its pod template is patched, unless stuck is set (then
// they bump the generation and never observe it).
type workloadCluster struct {
	*fake.Clientset
	stuck bool
}

func newWorkloadCluster(t *testing.T, objs ...runtime.Object) *workloadCluster {
	t.Helper()
	wc := &workloadCluster{Clientset: fake.NewClientset(objs...)}
	for _, res := range []string{"deployments", "daemonsets", "statefulsets"} {
		wc.PrependReactor("patch", res, func(a k8stesting.Action) (bool, runtime.Object, error) {
			gvr, ns, name := a.GetResource(), a.GetNamespace(), a.(k8stesting.PatchAction).GetName()
			obj, err := wc.Tracker().Get(gvr, ns, name)
			if err != nil {
				return false, nil, nil
			}
			obj = obj.DeepCopyObject()
			m, err := meta.Accessor(obj)
			if err != nil {
				t.Fatal(err)
			}
			gen := m.GetGeneration() + 1
			m.SetGeneration(gen)
			if !wc.stuck {
				switch o := obj.(type) {
				case *appsv1.Deployment:
					n := replicasOf(o.Spec.Replicas)
					o.Status = appsv1.DeploymentStatus{ObservedGeneration: gen, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
				case *appsv1.DaemonSet:
					n := o.Status.DesiredNumberScheduled
					o.Status = appsv1.DaemonSetStatus{ObservedGeneration: gen, DesiredNumberScheduled: n, CurrentNumberScheduled: n, UpdatedNumberScheduled: n, NumberAvailable: n, NumberReady: n}
				case *appsv1.StatefulSet:
					n := replicasOf(o.Spec.Replicas)
					o.Status = appsv1.StatefulSetStatus{ObservedGeneration: gen, Replicas: n, ReadyReplicas: n, UpdatedReplicas: n, CurrentRevision: "r2", UpdateRevision: "r2"}
				}
			}
			if err := wc.Tracker().Update(gvr, obj, ns); err != nil {
				t.Fatal(err)
			}
			return false, nil, nil // the patch itself is the tracker's
		})
	}
	return wc
}

// patched lists the workloads patched, in order, as namespace/kind/name.
func (wc *workloadCluster) patched() []string {
	kinds := map[string]string{"deployments": "Deployment", "daemonsets": "DaemonSet", "statefulsets": "StatefulSet"}
	var out []string
	for _, a := range wc.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			out = append(out, p.GetNamespace()+"/"+kinds[p.GetResource().Resource]+"/"+p.GetName())
		}
	}
	return out
}

func template(labels map[string]string, mod func(*corev1.PodSpec)) corev1.PodTemplateSpec {
	t := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}}
	if mod != nil {
		mod(&t.Spec)
	}
	return t
}

func deployment(ns, name string, replicas int32, tmpl corev1.PodTemplateSpec) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec:   appsv1.DeploymentSpec{Replicas: ptr.To(replicas), Template: tmpl},
		Status: appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: replicas, UpdatedReplicas: replicas, ReadyReplicas: replicas, AvailableReplicas: replicas}}
}

func daemonSet(ns, name string, strategy appsv1.DaemonSetUpdateStrategyType, tmpl corev1.PodTemplateSpec) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec:   appsv1.DaemonSetSpec{Template: tmpl, UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: strategy}},
		Status: appsv1.DaemonSetStatus{ObservedGeneration: 1, DesiredNumberScheduled: 3, CurrentNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 3, NumberReady: 3}}
}

// projectedRootCA mounts kube-root-ca.crt as a ServiceAccount token volume
// does.
func projectedRootCA(s *corev1.PodSpec) {
	s.Volumes = append(s.Volumes, corev1.Volume{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}}},
		}}}})
}

// caReaderObjects is a cluster with CA readers and workloads that are not.
func caReaderObjects() []runtime.Object {
	noToken := func(s *corev1.PodSpec) { s.AutomountServiceAccountToken = ptr.To(false) }
	return []runtime.Object{
		// Read the CA (kube-proxy's ServiceAccount cannot be read: taken to automount).
		daemonSet("kube-system", "kube-proxy", appsv1.RollingUpdateDaemonSetStrategyType, template(map[string]string{"k8s-app": "kube-proxy"}, func(s *corev1.PodSpec) { s.ServiceAccountName = "kube-proxy" })),
		deployment("kube-system", "coredns", 2, template(map[string]string{"k8s-app": "kube-dns"}, func(s *corev1.PodSpec) { s.ServiceAccountName = "coredns" })),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns"}},
		deployment("kube-system", "aaa-web", 1, template(map[string]string{"app": "web"}, nil)),
		deployment("kube-system", "mounts-it", 1, template(map[string]string{"app": "m"}, func(s *corev1.PodSpec) { noToken(s); projectedRootCA(s) })),
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "db", Generation: 4},
			Spec:   appsv1.StatefulSetSpec{Replicas: ptr.To[int32](1), Template: template(map[string]string{"app": "db"}, nil)},
			Status: appsv1.StatefulSetStatus{ObservedGeneration: 4, Replicas: 1, ReadyReplicas: 1, CurrentRevision: "r1", UpdateRevision: "r1"}},
		// A budget allowing no disruption of a fully available workload does not hold its restart.
		&policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns"},
			Spec: policyv1.PodDisruptionBudgetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}}}},
		// Cannot be rolled.
		daemonSet("kube-system", "calico-node", appsv1.OnDeleteDaemonSetStrategyType, template(map[string]string{"k8s-app": "calico-node"}, nil)),
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "debug"}, Spec: template(nil, projectedRootCA).Spec},
		// Do not read the CA.
		deployment("kube-system", "no-token", 1, template(nil, noToken)),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "quiet"}, AutomountServiceAccountToken: ptr.To(false)},
		deployment("kube-system", "quiet-sa", 1, template(nil, func(s *corev1.PodSpec) { s.ServiceAccountName = "quiet" })),
		deployment("kube-system", "scaled-down", 0, template(nil, nil)),
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "static", OwnerReferences: []metav1.OwnerReference{{Kind: "Node", Name: "cp-1"}}},
			Spec: template(nil, projectedRootCA).Spec},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "done"}, Spec: template(nil, projectedRootCA).Spec,
			Status: corev1.PodStatus{Phase: corev1.PodSucceeded}},
	}
}

// noteWith returns the first note of rep containing all of parts.
func noteWith(rep *Report, parts ...string) string {
	for _, n := range rep.Notes {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(n, p)
		}
		if ok {
			return n
		}
	}
	return ""
}

func TestRestartCAReaders(t *testing.T) {
	kubeSystem := []string{"kube-system/DaemonSet/kube-proxy", "kube-system/Deployment/coredns", "kube-system/Deployment/aaa-web", "kube-system/Deployment/mounts-it"}
	for name, tc := range map[string]struct {
		scope string
		want  []string
	}{
		"kube-system": {CAReadersKubeSystem, kubeSystem},
		"all":         {CAReadersAll, append(slices.Clone(kubeSystem), "app/StatefulSet/db")},
		"none":        {CAReadersNone, nil},
	} {
		t.Run(name, func(t *testing.T) {
			wc := newWorkloadCluster(t, caReaderObjects()...)
			r := &Runner{Client: wc, Timeout: time.Second, Poll: 10 * time.Millisecond}
			rep := &Report{}
			got, err := r.restartCAReaders(context.Background(), tc.scope, rep)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("restarted %q, want %q", got, tc.want)
			}
			if p := wc.patched(); !slices.Equal(p, tc.want) {
				t.Errorf("patched %q, want %q", p, tc.want)
			}
			for _, w := range tc.want {
				if noteWith(rep, w, "restarted") == "" {
					t.Errorf("no note of %s's restart in %q", w, rep.Notes)
				}
			}
			d, err := wc.AppsV1().Deployments("kube-system").Get(context.Background(), "coredns", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"]; ok != (tc.scope != CAReadersNone) {
				t.Errorf("coredns's template annotations %v", d.Spec.Template.Annotations)
			}
			if noteWith(rep, "kube-system/DaemonSet/calico-node", "OnDelete") == "" {
				t.Errorf("the OnDelete DaemonSet is not noted for a manual restart: %q", rep.Notes)
			}
			if noteWith(rep, "pod kube-system/debug", "yourself") == "" {
				t.Errorf("the bare pod is not noted for a manual restart: %q", rep.Notes)
			}
			for _, s := range []string{"kube-system/static", "kube-system/done", "no-token", "quiet-sa", "scaled-down"} {
				if n := noteWith(rep, s); n != "" {
					t.Errorf("note %q about %s, which does not read the CA or cannot", n, s)
				}
			}
			if tc.scope == CAReadersNone {
				if noteWith(rep, "kube-system/DaemonSet/kube-proxy", "not restarted") == "" || noteWith(rep, "app/StatefulSet/db", "not restarted") == "" {
					t.Errorf("scope none does not list what needs a restart: %q", rep.Notes)
				}
			}
		})
	}
}

func TestRestartCAReadersRolloutThatNeverFinishes(t *testing.T) {
	wc := newWorkloadCluster(t, caReaderObjects()...)
	wc.stuck = true
	r := &Runner{Client: wc, Timeout: 100 * time.Millisecond, Poll: 10 * time.Millisecond}
	rep := &Report{}
	got, err := r.restartCAReaders(context.Background(), CAReadersKubeSystem, rep)
	if err == nil {
		t.Fatal("no error, want kube-proxy's rollout not finished")
	}
	if noteWith(rep, "pod kube-system/debug") == "" || noteWith(rep, "kube-system/DaemonSet/calico-node") == "" {
		t.Errorf("what needs a manual restart is not noted when a restart fails: %q", rep.Notes)
	}
	for _, s := range []string{"kube-system/DaemonSet/kube-proxy", "did not finish", "kubectl rollout status -n kube-system daemonset/kube-proxy", "not restarted yet: kube-system/Deployment/coredns"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if len(got) != 0 {
		t.Errorf("restarted %q, want none finished", got)
	}
	if p := wc.patched(); !slices.Equal(p, []string{"kube-system/DaemonSet/kube-proxy"}) {
		t.Errorf("patched %q, want only kube-proxy: one workload at a time", p)
	}
}

func TestRestartCAReadersWaitsForDisruptionBudget(t *testing.T) {
	web := deployment("app", "web", 3, template(map[string]string{"app": "web", "tier": "front"}, nil))
	web.Status.AvailableReplicas = 2
	pdb := func(name string, allowed int32, sel map[string]string) *policyv1.PodDisruptionBudget {
		return &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name},
			Spec:   policyv1.PodDisruptionBudgetSpec{Selector: &metav1.LabelSelector{MatchLabels: sel}},
			Status: policyv1.PodDisruptionBudgetStatus{DisruptionsAllowed: allowed}}
	}
	t.Run("never allows", func(t *testing.T) {
		wc := newWorkloadCluster(t, web, pdb("web", 0, map[string]string{"app": "web"}), pdb("other", 0, map[string]string{"app": "other"}))
		r := &Runner{Client: wc, Timeout: 100 * time.Millisecond, Poll: 10 * time.Millisecond}
		_, err := r.restartCAReaders(context.Background(), CAReadersAll, &Report{})
		if err == nil || !strings.Contains(err.Error(), "PodDisruptionBudget app/web allowed no disruption") || !strings.Contains(err.Error(), "2 of its 3 pods") {
			t.Errorf("err %v, want budget app/web named", err)
		}
		if err != nil && strings.Contains(err.Error(), "app/other") {
			t.Errorf("err %v names a budget that does not select the workload", err)
		}
		if p := wc.patched(); len(p) != 0 {
			t.Errorf("patched %q while the budget allowed no disruption", p)
		}
	})
	t.Run("allows later", func(t *testing.T) {
		wc := newWorkloadCluster(t, web, pdb("web", 0, map[string]string{"app": "web"}))
		lists := 0
		wc.PrependReactor("list", "poddisruptionbudgets", func(k8stesting.Action) (bool, runtime.Object, error) {
			if lists++; lists == 3 {
				if err := wc.Tracker().Update(policyv1.SchemeGroupVersion.WithResource("poddisruptionbudgets"), pdb("web", 1, map[string]string{"app": "web"}), "app"); err != nil {
					t.Error(err)
				}
			}
			return false, nil, nil
		})
		r := &Runner{Client: wc, Timeout: 5 * time.Second, Poll: 10 * time.Millisecond}
		got, err := r.restartCAReaders(context.Background(), CAReadersAll, &Report{})
		if err != nil || !slices.Equal(got, []string{"app/Deployment/web"}) {
			t.Fatalf("restarted %q, err %v; want app/Deployment/web", got, err)
		}
		if lists < 3 {
			t.Errorf("restarted after %d looks at the budget, before it allowed a disruption", lists)
		}
	})
}

func TestRestartCAReadersRefusesAnUnknownScope(t *testing.T) {
	wc := newWorkloadCluster(t, caReaderObjects()...)
	r := &Runner{Client: wc, Timeout: time.Second}
	if _, err := r.restartCAReaders(context.Background(), "everything", &Report{}); err == nil || !strings.Contains(err.Error(), `unknown scope "everything"`) {
		t.Errorf("err %v, want the scope refused", err)
	}
	if n := len(wc.Actions()); n != 0 {
		t.Errorf("%d requests made, want none", n)
	}
}

// The cluster-level steps of a CA rotation make only the requests their
// permission lists name (the commands that will call them are not there
// yet for TestPreflightCoversEveryRequest to run).
func TestCATrustClusterPermissionsCoverEveryRequest(t *testing.T) {
	oldPEM, oldID := testCA(t, "kubernetes")
	newPEM, newID := testCA(t, "kubernetes-next")
	bundle := append(append([]byte{}, oldPEM...), newPEM...)
	for _, scope := range []string{CAReadersKubeSystem, CAReadersAll, CAReadersNone} {
		t.Run(scope, func(t *testing.T) {
			objs := append(caReaderObjects(), clusterInfo(t, oldPEM),
				&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}},
				&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(bundle)}})
			// A workload not fully available, so that budgets are listed.
			web := deployment("kube-system", "web", 2, template(map[string]string{"app": "web"}, nil))
			web.Status.AvailableReplicas = 1
			wc := newWorkloadCluster(t, append(objs, web)...)
			r := &Runner{Client: wc, Timeout: time.Second, Poll: 10 * time.Millisecond}
			if _, err := r.setClusterInfoCA(context.Background(), bundle); err != nil {
				t.Fatal(err)
			}
			if err := r.waitRootCAPublished(context.Background(), []string{oldID, newID}); err != nil {
				t.Fatal(err)
			}
			if _, err := r.restartCAReaders(context.Background(), scope, &Report{}); err != nil {
				t.Fatal(err)
			}
			perms := permissions(permsCAClusterInfo).with(permsCARootCA, caReadersPermissions(scope))
			seen := map[string]bool{}
			for _, a := range wc.Actions() {
				res := a.GetResource()
				seen[a.GetVerb()+" "+res.Resource] = true
				if !perms.cover(a) || !coversName(perms, a) {
					t.Errorf("%s %s/%s %q in %q is not in the permission lists", a.GetVerb(), res.Resource, a.GetSubresource(), actionName(a), a.GetNamespace())
				}
			}
			for _, must := range []string{"update configmaps", "list poddisruptionbudgets", "get serviceaccounts"} {
				if !seen[must] && (scope != CAReadersNone || must != "list poddisruptionbudgets") {
					t.Errorf("no %s request: the test does not exercise what it checks", must)
				}
			}
		})
	}
}

// actionName is the name of the object an action is about, if one.
func actionName(a k8stesting.Action) string {
	switch a := a.(type) {
	case k8stesting.GetAction: // and PatchAction, which has the same GetName
		return a.GetName()
	case k8stesting.UpdateAction:
		if m, err := meta.Accessor(a.GetObject()); err == nil {
			return m.GetName()
		}
	}
	return ""
}

// coversName tells whether a permission matching a's verb, resource and
// namespace also allows its object's name (cover does not look at names).
func coversName(perms permissions, a k8stesting.Action) bool {
	res := a.GetResource()
	for _, p := range perms {
		if p.verb == a.GetVerb() && p.group == res.Group && p.resource == res.Resource && p.subresource == a.GetSubresource() &&
			(p.namespace == "" || p.namespace == a.GetNamespace()) && (p.name == "" || p.name == actionName(a)) {
			return true
		}
	}
	return false
}
