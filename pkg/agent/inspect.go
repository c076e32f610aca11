package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// layout is what kind of kubeadm node this is.
type layout struct {
	controlPlane bool
	externalEtcd bool
	// servingByCSR: the kubelet gets its serving certificate through the
	// CSR API (serverTLSBootstrap) instead of making a self-signed one.
	servingByCSR bool
}

// detectLayout refuses anything that is not kubeadm's layout, so no guess is
// ever written to a node.
func (a *Agent) detectLayout() (layout, error) {
	var l layout
	if !pki.Exists(a.Root, "etc/kubernetes") {
		return l, errors.New("not a kubeadm-layout node: /etc/kubernetes does not exist")
	}
	l.controlPlane = pki.Exists(a.Root, pki.ManifestsDir+"/kube-apiserver.yaml")
	if l.controlPlane {
		if !pki.Exists(a.Root, pki.PKIDir+"/ca.crt") {
			return l, errors.New("not a kubeadm-layout control plane: /etc/kubernetes/manifests/kube-apiserver.yaml exists but /etc/kubernetes/pki/ca.crt does not")
		}
		l.externalEtcd = !pki.Exists(a.Root, pki.ManifestsDir+"/etcd.yaml")
	} else if !pki.Exists(a.Root, pki.KubeletKubeconfig) {
		return l, errors.New("not a kubeadm-layout node: neither /etc/kubernetes/manifests/kube-apiserver.yaml (control plane) nor /etc/kubernetes/kubelet.conf (worker) exists")
	}
	l.servingByCSR = pki.Exists(a.Root, pki.KubeletServerCurrent)
	return l, nil
}

// certsOnNode is the inventory as it applies to this node.
func (l layout) certsOnNode() []pki.Cert {
	var out []pki.Cert
	for _, c := range pki.Inventory {
		if c.ControlPlaneOnly && !l.controlPlane {
			continue
		}
		if c.Service == pki.ServiceEtcd && l.externalEtcd {
			continue
		}
		if c.Name == "kubelet-serving" && l.servingByCSR {
			c = pki.KubeletServingCSR
		}
		out = append(out, c)
	}
	return out
}

func (a *Agent) inspect(req api.Request) (*api.InspectResult, error) {
	l, err := a.detectLayout()
	if err != nil {
		return nil, err
	}
	now := a.Now()
	res := &api.InspectResult{ControlPlane: l.controlPlane, ServingByCSR: l.servingByCSR}
	if c, err := pki.ReadCertificate(a.Root, pki.Cert{CertFile: pki.KubeletClientCurrent}); err == nil {
		res.NodeName = strings.TrimPrefix(c.Subject.CommonName, "system:node:")
	}
	var trust *trustReader
	if req.Trust {
		trust = a.readTrust(l)
		res.TrustPoints, res.Signers, res.Authorities = trust.points, trust.signers, trust.authorities
	}
	for _, c := range l.certsOnNode() {
		info := a.certInfo(req.Node, c, now)
		if trust != nil {
			info.Issuer = trust.issuer(c)
		}
		res.Certs = append(res.Certs, info)
	}
	for _, ca := range pki.CAs {
		// Workers hold only the cluster CA's certificate; an external etcd
		// keeps its CA to itself.
		if (!l.controlPlane && ca != pki.ClusterCA) || (ca == pki.EtcdCA && l.externalEtcd) {
			continue
		}
		res.CAs = append(res.CAs, a.caInfo(req.Node, ca, l, now))
	}
	if all, err := listBackups(a.Root); err == nil {
		for _, b := range all {
			info := b.info()
			info.Paths = nil
			res.Backups = append(res.Backups, info)
		}
	}
	if len(req.Services) > 0 {
		p, err := a.plan(req, l)
		if err != nil {
			return nil, err
		}
		res.Plan, res.Problems, res.Notes = p.changes, p.problems, p.notes
		if holder := lockedBy(a.Root); holder != "" && req.ReadOnly {
			res.Notes = append(res.Notes, "another rotation is in progress on this node: "+holder)
		} else if holder != "" {
			res.Problems = append(res.Problems, "another rotation is in progress on this node: "+holder)
		}
	}
	return res, nil
}

func describe(node, name, path string, cert *x509.Certificate, now time.Time) api.CertInfo {
	info := api.CertInfo{Node: node, Name: name, Path: "/" + path}
	if cert == nil {
		return info
	}
	nb, na := cert.NotBefore.UTC(), cert.NotAfter.UTC()
	info.Subject = cert.Subject.String()
	info.Serial = cert.SerialNumber.String()
	info.NotBefore, info.NotAfter = &nb, &na
	info.ResidualSeconds = int64(na.Sub(now).Seconds())
	info.KeyAlgorithm = pki.KeyAlgorithm(cert.PublicKey)
	info.SANs = append(info.SANs, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		info.SANs = append(info.SANs, ip.String())
	}
	return info
}

func (a *Agent) certInfo(node string, c pki.Cert, now time.Time) api.CertInfo {
	cert, err := pki.ReadCertificate(a.Root, c)
	info := describe(node, c.Name, c.Path(), cert, now)
	info.Service = string(c.Service)
	info.CA = c.CA.Name
	if c.Method == pki.SignedOnDisk && pki.Exists(a.Root, c.CA.CertFile) && !pki.Exists(a.Root, c.CA.KeyFile) {
		info.ExternallyManaged = true
	}
	switch {
	case errors.Is(err, pki.ErrMissing):
		info.Missing = true
	case err != nil:
		info.Error = err.Error()
	}
	return info
}

// caInfo describes a CA. Only on a control plane does a missing key mean
// an externally managed CA: workers never hold CA keys.
func (a *Agent) caInfo(node string, ca pki.CA, l layout, now time.Time) api.CertInfo {
	data, err := pki.ReadFile(a.Root, ca.CertFile)
	var cert *x509.Certificate
	if err == nil {
		cert, err = pki.ParseCertificatePEM(data)
	}
	info := describe(node, ca.Name, ca.CertFile, cert, now)
	info.ExternallyManaged = l.controlPlane && cert != nil && !pki.Exists(a.Root, ca.KeyFile)
	switch {
	case errors.Is(err, pki.ErrMissing):
		info.Missing = true
	case err != nil:
		info.Error = fmt.Sprintf("/%s: %v", ca.CertFile, err)
	}
	return info
}

// nodePlan is the outcome of checking a renewal before anything is written.
type nodePlan struct {
	renewals []*pki.Renewal
	// missing are certificates recover creates anew; creations and newCAs
	// what it will write for them.
	missing     []pki.Cert
	newCAs      []pki.File
	authorities map[string]*pki.Authority
	kubelet     []pki.Cert // renewed through CSR or self-signed in the kubelet actions
	services    map[pki.Service]bool
	changes     []api.PlannedChange
	problems    []string
	notes       []string
}

// plan computes, in memory, every renewal the request asks of this node and
// collects every reason it could not proceed. Nothing is written.
func (a *Agent) plan(req api.Request, l layout) (*nodePlan, error) {
	return a.planWith(req, l, nil)
}

// planWith is plan with the CAs that sign given (a CA rotation's switch of
// issuers: the new CAs) instead of read from the node's CA files; the
// certificates they signed already are left as they are.
func (a *Agent) planWith(req api.Request, l layout, signers map[string]*pki.Authority) (*nodePlan, error) {
	p := &nodePlan{services: map[pki.Service]bool{}}
	var services []pki.Service
	for _, name := range req.Services {
		s := pki.Service(name)
		if s != pki.ServiceAdmin {
			var err error
			if s, err = pki.ParseService(name); err != nil {
				return nil, err
			}
		}
		services = append(services, s)
		p.services[s] = true
	}
	if p.services[pki.ServiceEtcd] && l.externalEtcd && len(services) == 1 {
		p.problems = append(p.problems, "etcd is external to this cluster (no /etc/kubernetes/manifests/etcd.yaml): rotate its certificates where etcd runs")
	}
	if p.services[pki.ServiceKubeProxy] {
		p.notes = append(p.notes, "kube-proxy authenticates with a ServiceAccount token in kubeadm clusters: no certificate file to renew; its pods are restarted")
	}
	validity := req.Validity
	if validity <= 0 {
		validity = 365 * 24 * time.Hour
	}
	now := a.Now()
	p.authorities = map[string]*pki.Authority{}
	for name, auth := range signers {
		p.authorities[name] = auth
	}
	dirs := map[string]bool{}
	for _, c := range l.certsOnNode() {
		if !p.services[c.Service] {
			continue
		}
		cert, err := pki.ReadCertificate(a.Root, c)
		if errors.Is(err, pki.ErrMissing) {
			switch {
			case req.Recover && pki.Creatable(c):
				p.missing = append(p.missing, c)
				dirs[parentDir(c.Path())] = true
			case !c.Optional:
				p.problems = append(p.problems, fmt.Sprintf("%s: /%s is missing", c.Name, c.Path()))
			}
			continue
		}
		if err != nil {
			p.problems = append(p.problems, fmt.Sprintf("%s: %v (restore it from a backup or re-create it with kubeadm before rotating)", c.Name, err))
			continue
		}
		dirs[parentDir(c.Path())] = true
		if c.Method != pki.SignedOnDisk {
			p.kubelet = append(p.kubelet, c)
			p.changes = append(p.changes, plannedChange(c, cert))
			continue
		}
		auth := p.authority(a.Root, c.CA, now)
		if auth == nil {
			continue
		}
		if signers[c.CA.Name] != nil && cert.CheckSignatureFrom(auth.Cert) == nil {
			continue // re-issued by the new CA already
		}
		r, err := pki.PlanRenewal(a.Root, c, auth, validity, now)
		if err != nil {
			p.problems = append(p.problems, fmt.Sprintf("%s: %v", c.Name, err))
			continue
		}
		if r.New.Capped {
			p.notes = append(p.notes, fmt.Sprintf("%s: validity capped at CA %s expiry %s", c.Name, c.CA.Name, auth.Cert.NotAfter.UTC().Format(time.RFC3339)))
		}
		p.renewals = append(p.renewals, r)
		p.changes = append(p.changes, plannedChange(c, r.Old))
	}
	if len(p.missing) > 0 {
		a.planCreations(p, l, validity, now)
	}
	if req.ReadOnly {
		// An unprivileged pod with read-only mounts: what needs writing or
		// systemd is checked by the run itself, before it changes anything.
		return p, nil
	}
	if len(p.changes) > 0 {
		dirs["etc/kubernetes"] = true // the backup goes there
	}
	for d := range dirs {
		if err := pki.CheckWritable(a.Root, d); err != nil {
			p.problems = append(p.problems, fmt.Sprintf("%v: the agent needs /etc/kubernetes and /var/lib/kubelet writable", err))
		}
	}
	if p.services[pki.ServiceKubelet] && !pki.Exists(a.Root, "run/systemd/private") {
		p.problems = append(p.problems, "systemd's socket /run/systemd/private is not available: the kubelet cannot be restarted through systemd on this node")
	}
	return p, nil
}

func plannedChange(c pki.Cert, cert *x509.Certificate) api.PlannedChange {
	pc := api.PlannedChange{Name: c.Name, Service: string(c.Service), Path: "/" + c.Path()}
	if cert != nil {
		pc.Serial, pc.NotBefore, pc.NotAfter = cert.SerialNumber.String(), cert.NotBefore.UTC(), cert.NotAfter.UTC()
	}
	return pc
}

// authority loads a CA once per plan; a CA that cannot sign (external,
// missing, corrupt, expired) is noted or made a problem, and nil.
func (p *nodePlan) authority(root string, ca pki.CA, now time.Time) *pki.Authority {
	if auth, ok := p.authorities[ca.Name]; ok {
		return auth
	}
	auth, err := pki.LoadAuthority(root, ca)
	if errors.Is(err, pki.ErrExternalCA) {
		p.notes = append(p.notes, fmt.Sprintf("CA %s is externally managed (/%s without its key): its certificates are not renewed here", ca.Name, ca.KeyFile))
	} else if err != nil {
		p.problems = append(p.problems, fmt.Sprintf("%v (a missing or corrupt CA must be restored before rotating; this tool never changes CAs)", err))
	}
	if auth != nil {
		if err := usableCA(auth, now); err != nil {
			p.problems = append(p.problems, err.Error())
			auth = nil
		}
	}
	p.authorities[ca.Name] = auth
	return auth
}

// usableCA refuses a CA that is not valid now: whatever it signed would be
// refused too, and issuing a certificate past its CA's expiry would give a
// NotAfter before the NotBefore.
func usableCA(a *pki.Authority, now time.Time) error {
	const advice = "this tool keeps CAs; replacing one changes every certificate on every node and every kubeconfig (kubeadm documents it as manual rotation of CA certificates)"
	switch {
	case now.After(a.Cert.NotAfter):
		return fmt.Errorf("CA %s (/%s) expired on %s: nothing it signs would be trusted, so nothing signed by it is renewed; %s", a.CA.Name, a.CA.CertFile, a.Cert.NotAfter.UTC().Format(time.RFC3339), advice)
	case now.Before(a.Cert.NotBefore):
		return fmt.Errorf("CA %s (/%s) is not valid before %s (is this node's clock right?): nothing signed by it is renewed", a.CA.Name, a.CA.CertFile, a.Cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func parentDir(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "."
}
