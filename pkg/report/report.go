// Package report is the machine-readable output of kubectl rotate-certs
// (-o json and -o yaml): what a command did, or would do, on which node.
// Its types are versioned like Kubernetes objects (apiVersion and kind), so
// scripts can check what they parse; within one apiVersion fields are only
// ever added, never renamed or removed. It depends on no other package, so
// the plugin, its tests and programs written in Go can all use it.
//
// Every field is documented here and in the README ("Output for scripts").
// Times are RFC 3339 in UTC; serial numbers are decimal strings (they do not
// fit in a JSON number).
package report

import "time"

// APIVersion is the apiVersion of every report of this package.
const APIVersion = "rotate-certs.io/v1alpha1"

// TypeMeta names a report's schema, as Kubernetes objects name theirs
// (apiVersion first, as kubectl prints them).
type TypeMeta struct {
	// APIVersion is rotate-certs.io/v1alpha1.
	APIVersion string `json:"apiVersion"`
	// Kind is RotationReport, RollbackReport, RecoverReport, StatusReport,
	// CAStatusReport or CARotationReport.
	Kind string `json:"kind"`
}

// Kinds of reports. RotationReport, RollbackReport, RecoverReport and
// CARotationReport share one schema (RotationReport); StatusReport and
// CAStatusReport have their own.
const (
	// KindRotation is the report of a rotation (kubectl rotate-certs --all
	// or --service), and, with dryRun true, of its plan (--dry-run).
	KindRotation = "RotationReport"
	// KindRollback is the report of kubectl rotate-certs rollback.
	KindRollback = "RollbackReport"
	// KindRecover is the report of kubectl rotate-certs recover.
	KindRecover = "RecoverReport"
	// KindStatus is the report of kubectl rotate-certs status.
	KindStatus = "StatusReport"
	// KindCAStatus is the report of kubectl rotate-certs ca status.
	KindCAStatus = "CAStatusReport"
	// KindCARotation is the report of a CA rotation phase (kubectl
	// rotate-certs ca prepare, trust, rollback): a RotationReport whose
	// caRotation says where the rotation stands.
	KindCARotation = "CARotationReport"
)

// Results of a run.
const (
	// Succeeded: everything asked was done (or, in a dry run, planned).
	Succeeded = "Succeeded"
	// Failed: the run stopped at an error; the report says what was done
	// before it, and the command exited non-zero.
	Failed = "Failed"
	// Interrupted: the run was interrupted (Ctrl-C, SIGTERM); running the
	// same command again resumes it.
	Interrupted = "Interrupted"
)

// RotationReport is what a rotation, a rollback or a recover did on each
// node, or, with DryRun, what it would do. It is printed on stdout even when
// the run failed part-way, with Result Failed: then it holds what was done
// before the failure.
type RotationReport struct {
	TypeMeta `json:",inline"`
	// RunID names the run (rc-<16 hex digits>). The backups the run left
	// on the nodes carry it: kubectl rotate-certs rollback --run RUNID
	// undoes a rotation.
	RunID string `json:"runID,omitempty"`
	// DryRun: nothing was changed; Nodes hold the plan.
	DryRun bool `json:"dryRun"`
	// RolledBackRun (RollbackReport) is the rotation run whose files were
	// (or, in a dry run, would be) put back.
	RolledBackRun string `json:"rolledBackRun,omitempty"`
	// User is who ran it, as the API server named them
	// (SelfSubjectReview), when it answered.
	User string `json:"user,omitempty"`
	// Result is Succeeded, Failed or Interrupted.
	Result string `json:"result"`
	// Error is why the run failed (the same text the command printed on
	// stderr). Empty when it succeeded.
	Error string `json:"error,omitempty"`
	// Nodes are the nodes worked on (or planned), in the order they were:
	// control planes first, then workers.
	Nodes []NodeReport `json:"nodes"`
	// Notes are facts about the run as a whole worth knowing (a resumed
	// run, kube-proxy's pods restarted, an audit event that could not be
	// recorded).
	Notes []string `json:"notes,omitempty"`
	// CARotation (CARotationReport) is the CA rotation the phase worked on.
	CARotation *CARotation `json:"caRotation,omitempty"`
}

// CARotation is where a CA rotation stands.
type CARotation struct {
	// ID names the rotation (its record, kube-system/rotate-certs-ca).
	ID string `json:"id"`
	// PhaseRun is the phase this command ran (prepare, trust, rollback);
	// Phase is the last phase completed on every node (prepared,
	// trusted), empty before prepare completed and after a rollback.
	PhaseRun string `json:"phaseRun"`
	Phase    string `json:"phase,omitempty"`
	// CAs are the rotated kubeadm CAs: their old and new ids.
	CAs []CAPair `json:"cas,omitempty"`
	// RestartedWorkloads are the workloads restarted to read the new CA
	// (namespace/Kind/name).
	RestartedWorkloads []string `json:"restartedWorkloads,omitempty"`
}

// CAPair is one kubeadm CA of a rotation.
type CAPair struct {
	// Name is kubeadm's: ca, front-proxy-ca, etcd-ca.
	Name string `json:"name"`
	// Old and New are CA ids (16 hex digits, as ca status prints them).
	Old string `json:"old"`
	New string `json:"new"`
}

// NodeReport is what happened on one node.
type NodeReport struct {
	// Name is the node's name in the cluster.
	Name string `json:"name"`
	// ControlPlane tells whether the node runs the control plane.
	ControlPlane bool `json:"controlPlane"`
	// Certificates are the certificates renewed (or restored, or in a dry
	// run, planned) on the node.
	Certificates []Certificate `json:"certificates"`
	// FilesToRestore (rollback --dry-run) are the files a rollback would
	// put back on the node.
	FilesToRestore []string `json:"filesToRestore,omitempty"`
	// Restarted are the components restarted to load the new files.
	Restarted []Restart `json:"restarted,omitempty"`
	// Verified are reloads proven without a restart, in words, e.g.
	// "kube-apiserver serves apiserver serial 1234 on 127.0.0.1:6443".
	Verified []string `json:"verified,omitempty"`
	// Backups are the backups the node's transactions made, folders under
	// /etc/kubernetes/rotate-certs-backup on the node.
	Backups []string `json:"backups,omitempty"`
	// Failure, when set, is the step that failed on this node and what
	// became of the node.
	Failure *Failure `json:"failure,omitempty"`
	// Notes are facts about this node worth knowing (a validity capped at
	// its CA's expiry, an externally managed CA left alone).
	Notes []string `json:"notes,omitempty"`
}

// Certificate is one certificate renewed, restored or planned.
type Certificate struct {
	// Name is the certificate's kubeadm name (apiserver, etcd-server,
	// admin.conf, kubelet-client, ...).
	Name string `json:"name"`
	// Path is the file on the node.
	Path string `json:"path,omitempty"`
	// OldSerial is the serial of the certificate before (in a dry run: the
	// current one). Empty for a certificate created anew (recover).
	OldSerial string `json:"oldSerial,omitempty"`
	// NewSerial is the serial of the certificate now on the node (renewed,
	// or restored by a rollback). Empty in a dry run.
	NewSerial string `json:"newSerial,omitempty"`
	// OldNotAfter is when the certificate before expired (expires).
	OldNotAfter *time.Time `json:"oldNotAfter,omitempty"`
	// NewNotAfter is when the certificate now on the node expires.
	NewNotAfter *time.Time `json:"newNotAfter,omitempty"`
	// CappedToCA: the requested validity was cut at the CA's expiry.
	CappedToCA bool `json:"cappedToCA,omitempty"`
}

// Restart is one component restarted on a node.
type Restart struct {
	// Component is kube-controller-manager, kube-scheduler, etcd,
	// kube-apiserver or kubelet.
	Component string `json:"component"`
	// OldPID and NewPID are the component's process IDs on the node.
	OldPID int `json:"oldPID,omitempty"`
	NewPID int `json:"newPID,omitempty"`
	// DowntimeSeconds is the time from stopping the old process to a new
	// one answering its health check.
	DowntimeSeconds float64 `json:"downtimeSeconds"`
}

// Failure is a node's failed step.
type Failure struct {
	// Step is what failed: renew, kubelet-install, rollback, ...
	Step string `json:"step,omitempty"`
	// Outcome is what became of the node's files: unchanged (failed before
	// changing any), restored (every changed file was put back),
	// restore-failed (files could not be put back: the node needs a
	// person), busy (another rotation held the node), or unknown (the
	// plugin lost contact; the node ends its transaction on its own).
	Outcome string `json:"outcome"`
	// Message says what went wrong.
	Message string `json:"message"`
}

// StatusReport is every certificate and CA of every node
// (kubectl rotate-certs status -o json|yaml).
type StatusReport struct {
	TypeMeta `json:",inline"`
	// Certificates are the nodes' certificates, node by node.
	Certificates []CertInfo `json:"certificates"`
	// CertificateAuthorities are the nodes' CAs, node by node.
	CertificateAuthorities []CertInfo `json:"certificateAuthorities"`
	// Errors are nodes whose files could not be read.
	Errors []NodeError `json:"errors,omitempty"`
}

// CertInfo is one certificate or CA on a node.
type CertInfo struct {
	// Node is the node the file is on.
	Node string `json:"node"`
	// Name is the kubeadm name (apiserver, ca, admin.conf, ...).
	Name string `json:"name"`
	// Path is the file on the node.
	Path string `json:"path"`
	// Service is the --service that renews it (etcd, kube-apiserver, ...).
	Service string `json:"service,omitempty"`
	// Subject is the certificate's subject, as OpenSSL prints it.
	Subject string `json:"subject,omitempty"`
	// Serial is the decimal serial number.
	Serial string `json:"serial,omitempty"`
	// NotBefore and NotAfter bound its validity.
	NotBefore *time.Time `json:"notBefore,omitempty"`
	NotAfter  *time.Time `json:"notAfter,omitempty"`
	// ResidualSeconds is the time left until NotAfter (negative once
	// expired).
	ResidualSeconds int64 `json:"residualSeconds"`
	// CA names the CA that signs it.
	CA string `json:"ca,omitempty"`
	// ExternallyManaged: its CA's key is not on the node, so it is not
	// renewed here.
	ExternallyManaged bool `json:"externallyManaged"`
	// Missing: the file does not exist on the node.
	Missing bool `json:"missing"`
	// KeyAlgorithm is e.g. RSA-2048 or ECDSA-P256.
	KeyAlgorithm string `json:"keyAlgorithm,omitempty"`
	// SANs are its DNS names and IP addresses.
	SANs []string `json:"sans,omitempty"`
	// Error says why the file could not be read.
	Error string `json:"error,omitempty"`
	// Issuer (CAStatusReport only) is the id of the CA, among the node's
	// CA files, whose signature the certificate carries; "self-signed"
	// for the kubelet's own serving certificate, "unknown" when no CA
	// file of the node signed it.
	Issuer string `json:"issuer,omitempty"`
}

// NodeError is a node whose certificates could not be read.
type NodeError struct {
	Node  string `json:"node"`
	Error string `json:"error"`
}

// CAStatusReport is which CAs every trust point of every node trusts, and
// which CA signed each certificate (kubectl rotate-certs ca status -o
// json|yaml). A CA is named by its id: 16 hex digits of the SHA-256 of its
// subject and public key, the same for every copy of it and for a CA
// re-issued with the same key and subject.
type CAStatusReport struct {
	TypeMeta `json:",inline"`
	// CertificateAuthorities are the CAs found on the nodes, each once.
	CertificateAuthorities []Authority `json:"certificateAuthorities"`
	// TrustPoints are, node by node, the files components read the CAs
	// they trust from, and the CAs each holds.
	TrustPoints []TrustPoint `json:"trustPoints"`
	// Signers are, node by node, the CA kube-controller-manager issues
	// certificates with (--cluster-signing-cert-file).
	Signers []TrustPoint `json:"signers"`
	// Certificates are the nodes' certificates, as in StatusReport, each
	// with its Issuer.
	Certificates []CertInfo `json:"certificates"`
	// Consistent: every trust point of each kubeadm CA trusts the same
	// CAs, every certificate and signer uses one of them, and nothing was
	// unreadable. Findings say otherwise, in words.
	Consistent bool     `json:"consistent"`
	Findings   []string `json:"findings,omitempty"`
	// Errors are nodes whose files could not be read.
	Errors []NodeError `json:"errors,omitempty"`
}

// Authority is a CA found on the nodes.
type Authority struct {
	// ID names the CA (16 hex digits).
	ID string `json:"id"`
	// CommonName is the CN of its subject.
	CommonName string `json:"commonName"`
	// NotAfter is when it expires: the earliest of its copies on the nodes.
	NotAfter time.Time `json:"notAfter"`
}

// TrustPoint is a file on a node that a component reads the CAs it trusts
// from (or, in Signers, the CA it signs with).
type TrustPoint struct {
	// Node is the node the file is on.
	Node string `json:"node"`
	// Path is the file: a PEM bundle, or a kubeconfig embedding the CAs.
	Path string `json:"path"`
	// Reader is the component that reads it: kube-apiserver, etcd,
	// kube-controller-manager, kube-scheduler, kubelet, kubeadm (its CA
	// files) or admin (admin.conf and super-admin.conf).
	Reader string `json:"reader"`
	// Setting is where the reader is told the file: a flag of its static
	// pod (--client-ca-file), a kubeconfig's certificate-authority-data,
	// the kubelet's clientCAFile, or the kubeadm CA name of a CA file.
	Setting string `json:"setting"`
	// CA is the kubeadm CA (ca, etcd-ca, front-proxy-ca) the file is meant
	// to hold.
	CA string `json:"ca,omitempty"`
	// CAs are the ids of the CAs it holds, in the file's order.
	CAs []string `json:"cas"`
	// Error says why the file could not be read as CA certificates.
	Error string `json:"error,omitempty"`
}

// NewCAStatusReport returns an empty CA status report.
func NewCAStatusReport() *CAStatusReport {
	return &CAStatusReport{TypeMeta: TypeMeta{APIVersion: APIVersion, Kind: KindCAStatus},
		CertificateAuthorities: []Authority{}, TrustPoints: []TrustPoint{}, Signers: []TrustPoint{}, Certificates: []CertInfo{}}
}

// NewRotationReport returns an empty report of the given kind
// (KindRotation, KindRollback or KindRecover).
func NewRotationReport(kind string) *RotationReport {
	return &RotationReport{TypeMeta: TypeMeta{APIVersion: APIVersion, Kind: kind}, Nodes: []NodeReport{}}
}

// NewStatusReport returns an empty status report.
func NewStatusReport() *StatusReport {
	return &StatusReport{TypeMeta: TypeMeta{APIVersion: APIVersion, Kind: KindStatus},
		Certificates: []CertInfo{}, CertificateAuthorities: []CertInfo{}}
}
