package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// The cluster-level steps of a CA rotation's "trust both" phase: the
// objects outside the nodes that carry the cluster CA (kube-public's
// cluster-info, every namespace's kube-root-ca.crt) and the workloads that
// read it once, at start.

const (
	// clusterInfoName is kubeadm's ConfigMap in kube-public that `kubeadm
	// join` discovers the cluster (its API server and CA) from.
	clusterInfoName = "cluster-info"
	// clusterInfoKey is its key holding a kubeconfig of one cluster.
	clusterInfoKey = "kubeconfig"
	// rootCAConfigMap is the ConfigMap kube-controller-manager's
	// root-ca-cert-publisher writes into every namespace, from its
	// --root-ca-file; ServiceAccount token volumes project it as ca.crt.
	rootCAConfigMap = "kube-root-ca.crt"
	// rootCAKey is its key holding the CA bundle.
	rootCAKey = "ca.crt"
	// restartedAtAnnotation is what `kubectl rollout restart` sets on a
	// pod template to roll its pods.
	restartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"
)

// setClusterInfoCA sets the certificate-authority-data of every cluster in
// kube-public/cluster-info's kubeconfig to bundle (PEM, one or more CA
// certificates), so `kubeadm join` discovery trusts what the API server
// serves during and after the rotation. The ConfigMap's other keys (the
// jws-kubeconfig-* signatures, which kube-controller-manager's bootstrap
// signer renews when the kubeconfig changes) are kept. changed is false
// when the kubeconfig already held bundle, and when there is no
// cluster-info (a cluster not made by kubeadm: the caller says so). A
// kubeconfig that cannot be read, or a cluster in it without CA data, is
// an error and nothing is written.
func (r *Runner) setClusterInfoCA(ctx context.Context, bundle []byte) (changed bool, err error) {
	if len(bytes.TrimSpace(bundle)) == 0 {
		return false, errors.New("cluster-info: the CA bundle to set is empty")
	}
	if _, err := pki.ParseCABundle(bundle); err != nil {
		return false, fmt.Errorf("cluster-info: the CA bundle to set: %w", err)
	}
	cms := r.Client.CoreV1().ConfigMaps(metav1.NamespacePublic)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		changed = false
		cm, err := cms.Get(ctx, clusterInfoName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		data, err := clusterInfoWithCA(cm, bundle)
		if err != nil || data == nil {
			return err
		}
		cm = cm.DeepCopy()
		cm.Data[clusterInfoKey] = string(data)
		if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return err
		}
		changed = true
		return nil
	})
	switch {
	case apierrors.IsNotFound(err):
		r.vlogf(1, "cluster-info: no ConfigMap %s/%s (not a kubeadm cluster?): nothing to update", metav1.NamespacePublic, clusterInfoName)
		return false, nil
	case err != nil:
		return false, fmt.Errorf("cluster-info: updating %s/%s: %w", metav1.NamespacePublic, clusterInfoName, err)
	}
	if changed {
		r.vlogf(1, "cluster-info: %s/%s now holds the CA bundle; kube-controller-manager's bootstrap signer signs it again", metav1.NamespacePublic, clusterInfoName)
	}
	return changed, nil
}

// clusterInfoWithCA returns cluster-info's kubeconfig with every cluster's
// CA data set to bundle, or nil if it already is.
func clusterInfoWithCA(cm *corev1.ConfigMap, bundle []byte) ([]byte, error) {
	where := fmt.Sprintf("%s/%s key %s", cm.Namespace, cm.Name, clusterInfoKey)
	raw, ok := cm.Data[clusterInfoKey]
	if !ok {
		return nil, fmt.Errorf("%s is missing: restore the ConfigMap (kubeadm init phase bootstrap-token) before rotating the CA", where)
	}
	cfg, err := clientcmd.Load([]byte(raw))
	if err != nil {
		return nil, fmt.Errorf("%s is not a kubeconfig (%v): fix or re-create it (kubeadm init phase bootstrap-token) before rotating the CA", where, err)
	}
	if len(cfg.Clusters) == 0 {
		return nil, fmt.Errorf("%s names no cluster: fix or re-create it (kubeadm init phase bootstrap-token) before rotating the CA", where)
	}
	same := true
	for name, c := range cfg.Clusters {
		if len(c.CertificateAuthorityData) == 0 {
			return nil, fmt.Errorf("%s: cluster %q has no certificate-authority-data: fix or re-create it (kubeadm init phase bootstrap-token) before rotating the CA", where, name)
		}
		if !bytes.Equal(c.CertificateAuthorityData, bundle) {
			same = false
			c.CertificateAuthorityData = bundle
		}
	}
	if same {
		return nil, nil
	}
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: writing the kubeconfig back: %w", where, err)
	}
	return data, nil
}

// waitRootCAPublished waits until the ConfigMap kube-root-ca.crt of every
// namespace holds exactly the CAs want (CA ids, pki.CAID), as a set: what
// kube-controller-manager's root-ca-cert-publisher writes from its
// --root-ca-file, and what every pod's ServiceAccount token volume shows
// as ca.crt. Namespaces being deleted are skipped. It polls every r.poll()
// for up to r.Timeout, one List of namespaces and one of the ConfigMaps
// per poll.
func (r *Runner) waitRootCAPublished(ctx context.Context, want []string) error {
	wantSet := caIDSet(want)
	if len(wantSet) == 0 {
		return errors.New("kube-root-ca.crt: no CA to wait for")
	}
	var differ map[string]string // namespace -> what it holds
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		d, err := r.rootCADiffers(ctx, wantSet)
		if err != nil {
			lastErr = err
			return false, nil
		}
		differ, lastErr = d, nil
		return len(differ) == 0, nil
	})
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if lastErr != nil {
		return fmt.Errorf("kube-root-ca.crt: could not check the namespaces within %s: %w", r.Timeout, lastErr)
	}
	var ns []string
	for n := range differ {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	var held []string
	for i, n := range ns {
		if i == 10 {
			held = append(held, fmt.Sprintf("and %d more", len(ns)-i))
			break
		}
		held = append(held, fmt.Sprintf("%s (%s)", n, differ[n]))
	}
	return fmt.Errorf("kube-root-ca.crt: after %s, %d namespace(s) do not hold exactly the CAs %s: %s\n"+
		"kube-controller-manager's root-ca-cert-publisher writes it from its --root-ca-file: check that every kube-controller-manager runs with the CA bundle as --root-ca-file and was restarted, and that its leader is healthy (its log names the namespaces it failed to update)",
		r.Timeout, len(ns), strings.Join(wantSet, ", "), strings.Join(held, "; "))
}

// rootCADiffers returns the namespaces (not being deleted) whose
// kube-root-ca.crt does not hold exactly the CAs want, with what each holds.
func (r *Runner) rootCADiffers(ctx context.Context, want []string) (map[string]string, error) {
	nss, err := r.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	cms, err := r.Client.CoreV1().ConfigMaps(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", rootCAConfigMap).String()})
	if err != nil {
		return nil, fmt.Errorf("listing the ConfigMaps %s: %w", rootCAConfigMap, err)
	}
	byNS := map[string]*corev1.ConfigMap{}
	for i := range cms.Items {
		if cm := &cms.Items[i]; cm.Name == rootCAConfigMap {
			byNS[cm.Namespace] = cm
		}
	}
	differ := map[string]string{}
	for _, ns := range nss.Items {
		if ns.Status.Phase == corev1.NamespaceTerminating || ns.DeletionTimestamp != nil {
			continue
		}
		cm, ok := byNS[ns.Name]
		if !ok {
			differ[ns.Name] = "no ConfigMap " + rootCAConfigMap
			continue
		}
		data, ok := cm.Data[rootCAKey]
		if !ok {
			differ[ns.Name] = "no key " + rootCAKey
			continue
		}
		certs, err := pki.ParseCABundle([]byte(data))
		if err != nil {
			differ[ns.Name] = "unreadable: " + err.Error()
			continue
		}
		var ids []string
		for _, c := range certs {
			ids = append(ids, pki.CAID(c))
		}
		if got := caIDSet(ids); !slices.Equal(got, want) {
			differ[ns.Name] = "holds " + strings.Join(got, ", ")
		}
	}
	return differ, nil
}

// caIDSet returns ids sorted, each once.
func caIDSet(ids []string) []string {
	out := slices.Clone(ids)
	sort.Strings(out)
	return slices.Compact(out)
}

// Scopes of restartCAReaders.
const (
	// CAReadersKubeSystem restarts the CA readers of kube-system only.
	CAReadersKubeSystem = "kube-system"
	// CAReadersAll restarts those of every namespace.
	CAReadersAll = "all"
	// CAReadersNone restarts nothing, and lists what needs a restart.
	CAReadersNone = "none"
)

// caReader is a workload whose pods read the cluster CA.
type caReader struct {
	kind, namespace, name string
	// manual says why the plugin cannot roll it, if it cannot.
	manual string
}

func (w caReader) String() string { return w.namespace + "/" + w.kind + "/" + w.name }

// rank orders kube-system first, and in it kube-proxy, then CoreDNS.
func (w caReader) rank() int {
	switch {
	case w.namespace != Namespace:
		return 3
	case w.kind == "DaemonSet" && w.name == "kube-proxy":
		return 0
	case w.kind == "Deployment" && w.name == "coredns":
		return 1
	}
	return 2
}

// restartCAReaders restarts, like `kubectl rollout restart`, the
// Deployments, DaemonSets and StatefulSets in scope (CAReadersKubeSystem,
// CAReadersAll; CAReadersNone restarts nothing) whose pods read the
// cluster CA: they mount a ServiceAccount token (whose ca.crt is
// kube-root-ca.crt) or kube-root-ca.crt itself, and clients built from the
// in-cluster config read it once, at start. It must run once every
// namespace's kube-root-ca.crt holds the new CA, before any issuer signs
// with it. One workload at a time, each rollout finished before the next,
// kube-system first (kube-proxy, then CoreDNS); a PodDisruptionBudget that
// allows no disruption of a workload not fully available is waited for.
// What the plugin cannot roll (update strategy OnDelete, a paused
// Deployment, a partitioned StatefulSet, pods without a controller) is
// noted in rep for the user to restart. It returns the workloads
// restarted, as namespace/kind/name; on error, those restarted before it.
func (r *Runner) restartCAReaders(ctx context.Context, scope string, rep *Report) ([]string, error) {
	ns := metav1.NamespaceAll
	switch scope {
	case CAReadersKubeSystem:
		ns = Namespace
	case CAReadersAll, CAReadersNone:
	default:
		return nil, fmt.Errorf("CA readers: unknown scope %q: use %s, %s or %s", scope, CAReadersKubeSystem, CAReadersAll, CAReadersNone)
	}
	readers, err := r.findCAReaders(ctx, ns)
	if err != nil {
		return nil, err
	}
	bare, err := r.bareCAReaderPods(ctx, ns)
	if err != nil {
		return nil, err
	}
	if scope == CAReadersKubeSystem {
		rep.note("CA readers: only kube-system's workloads were looked at: restart those of other namespaces that talk to the API server (kubectl rollout restart) so they read the CA bundle anew (before ca switch, and again after ca finish)")
	}
	for _, p := range bare {
		rep.note("CA readers: pod %s reads the cluster CA and has no controller to restart it: restart it yourself (delete and create it again) so it reads the CA bundle anew (before ca switch, and again after ca finish)", p)
	}
	for _, w := range readers {
		if w.manual != "" {
			rep.note("CA readers: %s reads the cluster CA once, at start, and cannot be rolled by the plugin (%s): delete its pods yourself once the new CA is trusted", w, w.manual)
		}
	}
	var restarted []string
	for _, w := range readers {
		switch {
		case w.manual != "":
			continue
		case scope == CAReadersNone:
			rep.note("CA readers: %s reads the cluster CA once, at start, and was not restarted (scope none): restart it yourself (kubectl rollout restart -n %s %s/%s) so it reads the CA bundle anew (before ca switch, and again after ca finish)", w, w.namespace, strings.ToLower(w.kind), w.name)
			continue
		}
		if err := r.waitDisruptionBudgets(ctx, w); err != nil {
			return restarted, fmt.Errorf("%w%s", err, notRestartedYet(readers, w))
		}
		if err := r.rolloutRestart(ctx, w); err != nil {
			return restarted, fmt.Errorf("%w%s", err, notRestartedYet(readers, w))
		}
		restarted = append(restarted, w.String())
		rep.note("CA readers: %s restarted, to read the CA bundle anew", w)
	}
	return restarted, nil
}

// notRestartedYet names the workloads after w, for an error to say what
// was left.
func notRestartedYet(readers []caReader, w caReader) string {
	var left []string
	after := false
	for _, x := range readers {
		if after && x.manual == "" {
			left = append(left, x.String())
		}
		after = after || x == w
	}
	if len(left) == 0 {
		return ""
	}
	return "\nnot restarted yet: " + strings.Join(left, ", ")
}

// findCAReaders lists the workloads of namespace ns (all: "") whose pod
// template reads the cluster CA, in restart order.
func (r *Runner) findCAReaders(ctx context.Context, ns string) ([]caReader, error) {
	apps := r.Client.AppsV1()
	sas := map[string]*bool{} // namespace/name -> the ServiceAccount's automount
	var out []caReader
	add := func(kind string, meta metav1.ObjectMeta, spec *corev1.PodTemplateSpec, manual string) {
		if r.templateReadsCA(ctx, meta.Namespace, &spec.Spec, sas) {
			out = append(out, caReader{kind: kind, namespace: meta.Namespace, name: meta.Name, manual: manual})
		}
	}
	deps, err := apps.Deployments(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("CA readers: listing Deployments: %w", err)
	}
	for i := range deps.Items {
		d := &deps.Items[i]
		if replicasOf(d.Spec.Replicas) == 0 {
			continue // no pod reads anything
		}
		manual := ""
		if d.Spec.Paused {
			manual = "the Deployment is paused"
		}
		add("Deployment", d.ObjectMeta, &d.Spec.Template, manual)
	}
	dss, err := apps.DaemonSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("CA readers: listing DaemonSets: %w", err)
	}
	for i := range dss.Items {
		d := &dss.Items[i]
		if d.Status.DesiredNumberScheduled == 0 && d.Status.CurrentNumberScheduled == 0 {
			continue
		}
		manual := ""
		if d.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType {
			manual = "update strategy OnDelete"
		}
		add("DaemonSet", d.ObjectMeta, &d.Spec.Template, manual)
	}
	stss, err := apps.StatefulSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("CA readers: listing StatefulSets: %w", err)
	}
	for i := range stss.Items {
		s := &stss.Items[i]
		if replicasOf(s.Spec.Replicas) == 0 {
			continue
		}
		manual := ""
		switch u := s.Spec.UpdateStrategy; {
		case u.Type == appsv1.OnDeleteStatefulSetStrategyType:
			manual = "update strategy OnDelete"
		case u.RollingUpdate != nil && u.RollingUpdate.Partition != nil && *u.RollingUpdate.Partition > 0:
			manual = fmt.Sprintf("its rolling update is partitioned at %d", *u.RollingUpdate.Partition)
		}
		add("StatefulSet", s.ObjectMeta, &s.Spec.Template, manual)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.rank() != b.rank() {
			return a.rank() < b.rank()
		}
		return a.String() < b.String()
	})
	return out, nil
}

// replicasOf is a replicas field's value (nil means 1).
func replicasOf(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

// templateReadsCA tells whether pods made from spec, in namespace ns, see
// the cluster CA: they mount kube-root-ca.crt (or take it into their
// environment), or get a ServiceAccount token volume (automounted unless
// the pod or else its ServiceAccount says otherwise; a ServiceAccount that
// cannot be read is taken to automount). sas caches the ServiceAccounts.
func (r *Runner) templateReadsCA(ctx context.Context, ns string, spec *corev1.PodSpec, sas map[string]*bool) bool {
	if specUsesRootCA(spec) {
		return true
	}
	if spec.AutomountServiceAccountToken != nil {
		return *spec.AutomountServiceAccountToken
	}
	sa := spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	key := ns + "/" + sa
	auto, ok := sas[key]
	if !ok {
		if got, err := r.Client.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{}); err == nil {
			auto = got.AutomountServiceAccountToken
		} else {
			r.vlogf(2, "CA readers: ServiceAccount %s: %v: taking its token to be mounted", key, err)
		}
		sas[key] = auto
	}
	return auto == nil || *auto
}

// specUsesRootCA tells whether a pod spec uses the ConfigMap
// kube-root-ca.crt: in a volume (projected, as ServiceAccount token
// volumes do, or whole) or in a container's environment.
func specUsesRootCA(spec *corev1.PodSpec) bool {
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == rootCAConfigMap {
			return true
		}
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.ConfigMap != nil && s.ConfigMap.Name == rootCAConfigMap {
				return true
			}
		}
	}
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			for _, e := range c.EnvFrom {
				if e.ConfigMapRef != nil && e.ConfigMapRef.Name == rootCAConfigMap {
					return true
				}
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil && e.ValueFrom.ConfigMapKeyRef.Name == rootCAConfigMap {
					return true
				}
			}
		}
	}
	return false
}

// bareCAReaderPods lists the running pods of namespace ns (all: "") that
// have no owner (no controller restarts them with the new CA) and use
// kube-root-ca.crt, as namespace/name. A pod's volumes are what admission
// made of its spec, so its ServiceAccount token volume, if any, is there.
func (r *Runner) bareCAReaderPods(ctx context.Context, ns string) ([]string, error) {
	pods, err := r.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("CA readers: listing pods: %w", err)
	}
	var out []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if len(p.OwnerReferences) > 0 || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if specUsesRootCA(&p.Spec) {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// workloadState is what a restart needs to know of a workload, read fresh.
type workloadState struct {
	generation int64
	selector   labels.Set // its pod template's labels
	replicas   int32
	available  int32
	// done says whether the rollout of generation gen has finished.
	done func(gen int64) bool
	// progress says where the rollout stands, for errors.
	progress string
	// failed says why the rollout cannot finish, if it cannot.
	failed string
}

// workload reads the state of w.
func (r *Runner) workload(ctx context.Context, w caReader) (*workloadState, error) {
	apps := r.Client.AppsV1()
	switch w.kind {
	case "Deployment":
		d, err := apps.Deployments(w.namespace).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		s, want := d.Status, replicasOf(d.Spec.Replicas)
		st := &workloadState{generation: d.Generation, selector: d.Spec.Template.Labels, replicas: want, available: s.AvailableReplicas,
			progress: fmt.Sprintf("%d updated, %d available, %d in all, of %d", s.UpdatedReplicas, s.AvailableReplicas, s.Replicas, want)}
		st.done = func(gen int64) bool {
			return s.ObservedGeneration >= gen && s.UpdatedReplicas == want && s.AvailableReplicas == want && s.Replicas == want
		}
		for _, c := range s.Conditions {
			if c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded" && s.ObservedGeneration >= d.Generation {
				st.failed = "its progress deadline was exceeded: " + c.Message
			}
		}
		return st, nil
	case "DaemonSet":
		d, err := apps.DaemonSets(w.namespace).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		s := d.Status
		return &workloadState{generation: d.Generation, selector: d.Spec.Template.Labels, replicas: s.DesiredNumberScheduled, available: s.NumberAvailable,
			progress: fmt.Sprintf("%d updated, %d available, of %d", s.UpdatedNumberScheduled, s.NumberAvailable, s.DesiredNumberScheduled),
			done: func(gen int64) bool {
				return s.ObservedGeneration >= gen && s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberAvailable == s.DesiredNumberScheduled
			}}, nil
	case "StatefulSet":
		sts, err := apps.StatefulSets(w.namespace).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		s, want := sts.Status, replicasOf(sts.Spec.Replicas)
		return &workloadState{generation: sts.Generation, selector: sts.Spec.Template.Labels, replicas: want, available: s.ReadyReplicas,
			progress: fmt.Sprintf("%d updated, %d ready, of %d", s.UpdatedReplicas, s.ReadyReplicas, want),
			done: func(gen int64) bool {
				return s.ObservedGeneration >= gen && s.UpdateRevision == s.CurrentRevision && s.ReadyReplicas == want
			}}, nil
	}
	return nil, fmt.Errorf("unknown kind %s", w.kind)
}

// waitDisruptionBudgets waits, up to r.Timeout, while a
// PodDisruptionBudget covering w's pods allows no disruption and w (of more
// than one pod) is not fully available: restarting it then would take
// down pods the budget protects.
func (r *Runner) waitDisruptionBudgets(ctx context.Context, w caReader) error {
	var blocking []string
	var st *workloadState
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		var err error
		if st, err = r.workload(ctx, w); err != nil {
			lastErr = err
			return false, nil
		}
		if st.replicas <= 1 || st.available >= st.replicas {
			return true, nil
		}
		pdbs, err := r.Client.PolicyV1().PodDisruptionBudgets(w.namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			lastErr = fmt.Errorf("listing PodDisruptionBudgets: %w", err)
			return false, nil
		}
		lastErr = nil
		blocking = budgetsAllowingNone(pdbs.Items, st.selector)
		return len(blocking) == 0, nil
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case lastErr != nil:
		return fmt.Errorf("CA readers: %s: %w", w, lastErr)
	}
	return fmt.Errorf("CA readers: %s: PodDisruptionBudget %s allowed no disruption for %s while only %d of its %d pods were available: "+
		"get its pods available (kubectl get pods -n %s) or relax the budget, then run again",
		w, strings.Join(blocking, ", "), r.Timeout, st.available, st.replicas, w.namespace)
}

// budgetsAllowingNone returns, as namespace/name, the budgets among pdbs
// that select pods labelled podLabels and allow no disruption.
func budgetsAllowingNone(pdbs []policyv1.PodDisruptionBudget, podLabels labels.Set) []string {
	var out []string
	for _, pdb := range pdbs {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || !sel.Matches(podLabels) {
			continue // an invalid selector selects nothing, as in the disruption controller
		}
		if pdb.Status.DisruptionsAllowed == 0 {
			out = append(out, pdb.Namespace+"/"+pdb.Name)
		}
	}
	sort.Strings(out)
	return out
}

// rolloutRestart rolls w's pods like `kubectl rollout restart` and waits,
// up to r.Timeout, for the rollout to finish.
func (r *Runner) rolloutRestart(ctx context.Context, w caReader) error {
	patch := []byte(fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{%q:%q}}}}}`, restartedAtAnnotation, time.Now().Format(time.RFC3339)))
	apps := r.Client.AppsV1()
	var gen int64
	var err error
	switch w.kind {
	case "Deployment":
		var d *appsv1.Deployment
		if d, err = apps.Deployments(w.namespace).Patch(ctx, w.name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err == nil {
			gen = d.Generation
		}
	case "DaemonSet":
		var d *appsv1.DaemonSet
		if d, err = apps.DaemonSets(w.namespace).Patch(ctx, w.name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err == nil {
			gen = d.Generation
		}
	case "StatefulSet":
		var s *appsv1.StatefulSet
		if s, err = apps.StatefulSets(w.namespace).Patch(ctx, w.name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err == nil {
			gen = s.Generation
		}
	default:
		err = fmt.Errorf("unknown kind %s", w.kind)
	}
	if err != nil {
		return fmt.Errorf("CA readers: restarting %s: %w", w, err)
	}
	r.logf("CA readers: %s: rolling its pods", w)
	var st *workloadState
	err = wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		s, err := r.workload(ctx, w)
		if err != nil {
			return false, nil
		}
		st = s
		if s.failed != "" {
			return false, errors.New(s.failed)
		}
		return s.done(gen), nil
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case st != nil && st.failed != "":
		return fmt.Errorf("CA readers: %s: the restart's rollout cannot finish: %s: see kubectl rollout status -n %s %s/%s", w, st.failed, w.namespace, strings.ToLower(w.kind), w.name)
	}
	progress := "its state could not be read"
	if st != nil {
		progress = st.progress
	}
	return fmt.Errorf("CA readers: %s: the restart's rollout did not finish within %s (%s): see kubectl rollout status -n %s %s/%s, fix what holds it, then run again",
		w, r.Timeout, progress, w.namespace, strings.ToLower(w.kind), w.name)
}
