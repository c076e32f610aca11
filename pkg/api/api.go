// Package api is the small JSON contract between the plugin (on the user's
// machine) and the agent (in a pod on each node). The plugin sends one
// Request on the agent's stdin; the agent answers with one Result on stdout.
// Only public material crosses it: certificates and certificate requests,
// never a private key.
package api

import "time"

// Where the agent pod mounts things; shared by the pod spec (orchestrator)
// and the agent.
const (
	// HostRoot is where the host's directories are mounted in the pod.
	HostRoot = "/host"
	// ResultsDir is an emptyDir in the pod where the agent keeps each
	// action's result, so a result survives a broken exec stream (an
	// action that restarts kube-apiserver or the kubelet cuts its own).
	ResultsDir = "/results"
	// Binary is the binary's path in the agent image.
	Binary = "/kubectl-rotate_certs"
)

// Action is what the agent is asked to do.
type Action string

const (
	// Inspect reads the node's layout and certificates and checks that a
	// renewal of the requested services could proceed. It changes nothing.
	Inspect Action = "inspect"
	// Renew backs up, renews the CA-signed files of the requested services,
	// restarts what cannot reload and proves the rest reloaded. On failure
	// the node is restored from its backup before the agent answers.
	Renew Action = "renew"
	// KubeletCSR generates the kubelet's new key(s) on the node and returns
	// certificate requests for the plugin to submit to the cluster.
	KubeletCSR Action = "kubelet-csr"
	// KubeletInstall installs the issued kubelet certificates and renews the
	// self-signed serving certificate. The kubelet is restarted separately.
	KubeletInstall Action = "kubelet-install"
	// RestartKubelet asks systemd on the host to restart the kubelet.
	RestartKubelet Action = "restart-kubelet"
	// KubeletStatus reports the kubelet's process and health; a restart
	// is proven by a new PID that answers healthz.
	KubeletStatus Action = "kubelet-status"
	// Rollback restores, as one transaction, the backups of one run (or
	// one backup) on the node, restarts what read the restored files and
	// proves the rest reloaded.
	Rollback Action = "rollback"
	// ListBackups reports the backups kept on the node.
	ListBackups Action = "list-backups"
	// DiscardPending removes the keys KubeletCSR left for a request that
	// will not be installed (its signing failed).
	DiscardPending Action = "discard-pending"
	// RestoreInterrupted takes the node's lock and restores a transaction whose agent
	// died, if there is one; it changes nothing else.
	RestoreInterrupted Action = "restore-interrupted"
	// RecoverRenew (recover, on a control plane) renews, as one
	// transaction, every certificate and kubeconfig --all renews, creates
	// what the static pods reference but is missing (front-proxy CA and
	// client, etcd's healthcheck client), and gives the node's kubelet a
	// client certificate signed here by the cluster CA. It restarts
	// nothing: with every certificate expired, etcd's members only regain
	// quorum once all of them have new ones.
	RecoverRenew Action = "recover-renew"
	// RecoverRestart (recover, on a control plane, after RecoverRenew on
	// every one) restarts the static pods and the kubelet without the API
	// and waits until etcd and kube-apiserver serve the new certificates.
	RecoverRestart Action = "recover-restart"
	// SignKubeletClient (recover, on a control plane) checks a worker's
	// kubelet client request as the plugin would and signs it with the
	// cluster CA: the CA key never leaves the control plane.
	SignKubeletClient Action = "sign-kubelet-client"
	// ReadAdminKubeconfig (recover) returns the renewed admin.conf, the
	// user's way back into the cluster.
	ReadAdminKubeconfig Action = "read-admin-kubeconfig"
	// Ping only proves the plugin is still there (the agent pod exits on
	// its own when no request came for a while).
	Ping Action = "ping"

	// CA rotation (kubectl rotate-certs ca). CAPrepare makes the new CAs
	// on a control plane and keeps them in their staging folder (or
	// reports the ones staged for the same rotation). CAHandoverKey makes
	// a receiving control plane's hand-over key pair, CAHandoverSeal
	// encrypts the staged CAs to it, CAHandoverOpen opens them there and
	// stages them: the plugin relays ciphertext only. CATrust makes every
	// trust point of the node hold the CAs CARequest.Trust says and
	// restarts what reads them once. CADiscard removes the staged CAs (the
	// rollback of CAPrepare).
	CAPrepare      Action = "ca-prepare"
	CAHandoverKey  Action = "ca-handover-key"
	CAHandoverSeal Action = "ca-handover-seal"
	CAHandoverOpen Action = "ca-handover-open"
	CATrust        Action = "ca-trust"
	CADiscard      Action = "ca-discard"
	// CASwitch makes a control plane's staged new CAs its signers and
	// re-issues every certificate its CAs signed there with them. CASign
	// signs a client certificate request with the new cluster CA (a
	// user's kubeconfig in its new version; the key stays with the user).
	CASwitch Action = "ca-switch"
	CASign   Action = "ca-sign"
)

// Outcome is what became of a request on the node: the plugin decides on
// it, never on the wording of an error.
type Outcome string

const (
	// Done: the action did what it was asked.
	Done Outcome = "done"
	// Unchanged: the action failed before it changed anything.
	Unchanged Outcome = "unchanged"
	// Restored: the action failed after changing files, and every file
	// was put back as it was (the transaction's backup).
	Restored Outcome = "restored"
	// RestoreFailed: the action failed and putting the files back failed
	// too: the node needs a person (the error names the backup).
	RestoreFailed Outcome = "restore-failed"
	// Busy: another rotation holds the node's lock.
	Busy Outcome = "busy"
	// NotReceived: a result was asked for a request the agent never got.
	NotReceived Outcome = "not-received"
	// Running: the request is still being performed.
	Running Outcome = "running"
	// Lost: the action's process ended without filing a result (killed).
	// A transaction it had begun is restored by the node's next one; the
	// plugin asks for that at once (RestoreInterrupted).
	Lost Outcome = "lost"
)

// Failed tells whether the outcome is a failure.
func (o Outcome) Failed() bool { return o != Done }

// WorkTimeout bounds the work of one node transaction (writes, restarts,
// verifications) for a step timeout: the agent gives up, restores and
// answers within it.
func WorkTimeout(step time.Duration) time.Duration { return 3 * step }

// TransactionTimeout bounds a whole node transaction, including restoring
// the files and restarting a component again after a failure. An agent pod
// that is deleted waits this long for its transaction to end (its
// termination grace period), and so does an interrupted plugin.
func TransactionTimeout(step time.Duration) time.Duration { return WorkTimeout(step) + step }

// Restart policies.
const (
	RestartNeeded = "needed" // only components that cannot reload
	RestartAll    = "all"    // also etcd and kube-apiserver
)

// Request is what the plugin sends.
type Request struct {
	// ID names this call; the agent files its result under it.
	ID string `json:"id"`
	// Version is the plugin's version; the agent refuses any other.
	Version  string        `json:"version"`
	Action   Action        `json:"action"`
	Node     string        `json:"node"`
	Services []string      `json:"services,omitempty"`
	Validity time.Duration `json:"validity,omitempty"`
	Restart  string        `json:"restart,omitempty"`
	// Graceful: other control planes serve behind a load balancer, so a
	// kube-apiserver that must restart is drained first (SIGTERM: it stops
	// accepting connections and finishes what it serves) and no request
	// through the load balancer fails; on a single control plane a kill
	// is faster (seconds of outage instead of a minute).
	Graceful bool `json:"graceful,omitempty"`
	// Run names the plugin's run; the node's backups are tagged with it
	// (rollback finds them by it) and its lock names it.
	Run string `json:"run,omitempty"`
	// Timeout bounds the action's own waits (a component coming back, a
	// served certificate); the whole transaction ends within a few of them.
	Timeout time.Duration `json:"timeout,omitempty"`
	// KeepBackups is how many runs' backups a committing transaction keeps
	// on the node (the newest ones; never fewer than one).
	KeepBackups int `json:"keepBackups,omitempty"`
	// ReadOnly inspections run in unprivileged pods with read-only mounts
	// (status, --dry-run): checks that need to write or reach systemd are
	// skipped, and nothing is written.
	ReadOnly bool `json:"readOnly,omitempty"`
	// Backup names one backup folder (Rollback of a single step).
	Backup string `json:"backup,omitempty"`
	// RollbackRun names the run whose backups Rollback restores.
	RollbackRun string `json:"rollbackRun,omitempty"`
	// Recover plans as recover does: certificates may have expired, and
	// what the static pods reference but is missing is created.
	Recover bool `json:"recover,omitempty"`
	// CSR is a worker's kubelet client request for SignKubeletClient,
	// and SignFor the node it must be for.
	CSR     *CSR   `json:"csr,omitempty"`
	SignFor string `json:"signFor,omitempty"`
	// Issued maps a certificate name (kubelet-client, kubelet-serving) to
	// the PEM certificate the cluster issued for the node's request.
	Issued map[string]string `json:"issued,omitempty"`
	// Trust: Inspect also reports the node's trust points and signers,
	// the CAs they hold, and which CA signed each certificate (ca status).
	Trust bool `json:"trust,omitempty"`
	// CA is what a CA rotation action needs.
	CA *CARequest `json:"ca,omitempty"`
}

// CARequest is the part of a request that a CA rotation's actions read.
type CARequest struct {
	// Rotation names the CA rotation (its record in the cluster): the
	// staged CAs and every hand-over are bound to it.
	Rotation string `json:"rotation"`
	// KeyAlgorithm and Validity are the new CAs' (CAPrepare): the current
	// CA's algorithm when empty.
	KeyAlgorithm string        `json:"keyAlgorithm,omitempty"`
	Validity     time.Duration `json:"validity,omitempty"`
	// New are the new CAs' certificates (PEM) by kubeadm CA name (ca,
	// front-proxy-ca, etcd-ca), as CAPrepare made them: what CATrust
	// adds or keeps, and what CAHandoverOpen must receive.
	New map[string]string `json:"new,omitempty"`
	// Trust is what CATrust makes the trust points hold: both (old and
	// new), old (the new removed again) or new (only the new).
	Trust string `json:"trust,omitempty"`
	// Peer is the other control plane of a hand-over: the receiver for
	// CAHandoverSeal, the sender for CAHandoverOpen.
	Peer string `json:"peer,omitempty"`
	// PublicKey is the receiver's hand-over key (CAHandoverSeal).
	PublicKey []byte `json:"publicKey,omitempty"`
	// Sealed is the sealed hand-over (CAHandoverOpen).
	Sealed []byte `json:"sealed,omitempty"`
	// CSR is the client certificate request CASign signs (PEM).
	CSR string `json:"csr,omitempty"`
}

// CAResult is what a CA rotation action answers.
type CAResult struct {
	// Staged are the certificates (PEM) of the CAs staged on the node, by
	// kubeadm CA name.
	Staged map[string]string `json:"staged,omitempty"`
	// Current are the certificates (PEM) of the CAs that sign now, by
	// kubeadm CA name (CAPrepare): the ones the rotation replaces.
	Current map[string]string `json:"current,omitempty"`
	// PublicKey is the hand-over key CAHandoverKey made.
	PublicKey []byte `json:"publicKey,omitempty"`
	// Sealed is what CAHandoverSeal made.
	Sealed []byte `json:"sealed,omitempty"`
	// Certificate is what CASign issued (PEM).
	Certificate string `json:"certificate,omitempty"`
	// Changed lists the trust points CATrust changed: "path (reader
	// setting)".
	Changed []string `json:"changed,omitempty"`
}

// Result is what the agent answers. Error is set when the action failed;
// in that case no file on the node differs from before the action.
type Result struct {
	AgentVersion string  `json:"agentVersion"`
	Node         string  `json:"node"`
	Outcome      Outcome `json:"outcome"`
	// Error says what went wrong, for people; Outcome says what it means.
	Error   string          `json:"error,omitempty"`
	Inspect *InspectResult  `json:"inspect,omitempty"`
	Renew   *RenewResult    `json:"renew,omitempty"`
	CSRs    []CSR           `json:"csrs,omitempty"`
	Kubelet *KubeletProcess `json:"kubelet,omitempty"`
	Backups []Backup        `json:"backups,omitempty"`
	// Certificate is what SignKubeletClient issued (PEM).
	Certificate string `json:"certificate,omitempty"`
	// Kubeconfig is the admin.conf ReadAdminKubeconfig read.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// CA is what a CA rotation action did.
	CA *CAResult `json:"ca,omitempty"`
}

// CertInfo describes one certificate on a node (the status schema).
type CertInfo struct {
	Node              string     `json:"node"`
	Name              string     `json:"name"`
	Path              string     `json:"path"`
	Service           string     `json:"service,omitempty"`
	Subject           string     `json:"subject,omitempty"`
	Serial            string     `json:"serial,omitempty"`
	NotBefore         *time.Time `json:"notBefore,omitempty"`
	NotAfter          *time.Time `json:"notAfter,omitempty"`
	ResidualSeconds   int64      `json:"residualSeconds"`
	CA                string     `json:"ca,omitempty"`
	ExternallyManaged bool       `json:"externallyManaged"`
	Missing           bool       `json:"missing"`
	KeyAlgorithm      string     `json:"keyAlgorithm,omitempty"`
	SANs              []string   `json:"sans,omitempty"`
	Error             string     `json:"error,omitempty"`
	// Issuer (Inspect with Trust) is the id of the CA among the node's CA
	// files whose signature the certificate carries, IssuerSelfSigned or
	// IssuerUnknown.
	Issuer string `json:"issuer,omitempty"`
}

// Issuer markers for a certificate no CA file of the node signed.
const (
	// IssuerSelfSigned: the kubelet's own serving certificate, signed by
	// itself or by the CA the kubelet made for it (in the same file).
	IssuerSelfSigned = "self-signed"
	// IssuerUnknown: none of the node's CA files signed it.
	IssuerUnknown = "unknown"
)

// Authority is one CA certificate a node holds, in a CA file or a trust
// point. Its ID (16 lowercase hex digits, see pki.CAID) is the same for
// every copy of the CA and for a CA re-issued with the same key and
// subject.
type Authority struct {
	ID         string    `json:"id"`
	CommonName string    `json:"commonName"`
	NotAfter   time.Time `json:"notAfter"`
}

// TrustPoint is a file a component reads the CAs it trusts from (or, as a
// signer, the CA it signs with).
type TrustPoint struct {
	// Path is the file on the node holding the CA certificates: a bundle,
	// or a kubeconfig embedding them.
	Path string `json:"path"`
	// Reader is the component that reads it: kube-apiserver, etcd,
	// kube-controller-manager, kubelet, kube-scheduler, kubeadm (its CA
	// files) or admin (admin.conf and super-admin.conf, for people).
	Reader string `json:"reader"`
	// Setting is where the reader is told the file: a flag of its static
	// pod (--client-ca-file), a kubeconfig field
	// (admin.conf certificate-authority-data), the kubelet's clientCAFile,
	// or the kubeadm CA name (ca, front-proxy-ca, etcd-ca).
	Setting string `json:"setting"`
	// CA is the kubeadm CA the file is meant to hold (ca, etcd-ca,
	// front-proxy-ca): the trust points of one CA must agree.
	CA string `json:"ca,omitempty"`
	// CAs are the ids of the CAs the file holds, in its order.
	CAs []string `json:"cas,omitempty"`
	// Error says why the file could not be read as CA certificates.
	Error string `json:"error,omitempty"`
}

// InspectResult is a node's layout and certificates.
type InspectResult struct {
	ControlPlane bool `json:"controlPlane"`
	// ServingByCSR: the kubelet's serving certificate comes from the CSR
	// API (serverTLSBootstrap), signed by kubernetes.io/kubelet-serving.
	ServingByCSR bool `json:"servingByCSR,omitempty"`
	// NodeName is the node's name in the cluster, as its kubelet's client
	// certificate says (system:node:<name>); a transport may reach the node
	// by another name.
	NodeName string `json:"nodeName,omitempty"`
	// Arch is the node's machine (GOARCH), for the agent binary a
	// transport copies there.
	Arch  string     `json:"arch,omitempty"`
	Certs []CertInfo `json:"certs"`
	CAs   []CertInfo `json:"cas"`
	// Problems are reasons the requested renewal cannot proceed on this
	// node. The plugin changes no node while any node reports one.
	Problems []string `json:"problems,omitempty"`
	// Notes are facts worth telling the user that do not block (an
	// externally managed CA whose certificates are skipped, kube-proxy using
	// a ServiceAccount token).
	Notes []string `json:"notes,omitempty"`
	// Plan lists the files the renewal would change.
	Plan []PlannedChange `json:"plan,omitempty"`
	// Backups are the node's backups (without their paths): a committed
	// one tagged with a run says that run's step is done on the node.
	Backups []Backup `json:"backups,omitempty"`
	// TrustPoints, Signers and Authorities (Inspect with Trust): what each
	// component trusts, which CA kube-controller-manager signs with, and
	// every CA the node holds, each once.
	TrustPoints []TrustPoint `json:"trustPoints,omitempty"`
	Signers     []TrustPoint `json:"signers,omitempty"`
	Authorities []Authority  `json:"authorities,omitempty"`
}

// PlannedChange is one certificate a renewal would replace.
type PlannedChange struct {
	Name      string    `json:"name"`
	Service   string    `json:"service"`
	Path      string    `json:"path"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
}

// Change is one certificate that was replaced.
type Change struct {
	Name        string    `json:"name"`
	Path        string    `json:"path"`
	OldSerial   string    `json:"oldSerial"`
	NewSerial   string    `json:"newSerial"`
	OldNotAfter time.Time `json:"oldNotAfter"`
	NewNotAfter time.Time `json:"newNotAfter"`
	// CappedToCA is set when NotAfter was limited to the CA's expiry.
	CappedToCA bool `json:"cappedToCA,omitempty"`
}

// Restarted is a component the agent restarted.
type Restarted struct {
	Component string  `json:"component"`
	OldPID    int     `json:"oldPID"`
	NewPID    int     `json:"newPID"`
	Seconds   float64 `json:"seconds"`
}

// RenewResult reports a renewal.
type RenewResult struct {
	Backup    string      `json:"backup,omitempty"`
	Changes   []Change    `json:"changes,omitempty"`
	Restarted []Restarted `json:"restarted,omitempty"`
	// Verified lists reloads proven without a restart, e.g.
	// "kube-apiserver serves serial 1234 on 127.0.0.1:6443".
	Verified []string `json:"verified,omitempty"`
	Notes    []string `json:"notes,omitempty"`
}

// CSR is a certificate request generated on the node. The plugin decides
// the signer and the usages from Name and checks the request itself: a node
// asks, it does not dictate.
type CSR struct {
	Name    string `json:"name"`    // kubelet-client or kubelet-serving
	Request string `json:"request"` // PEM
	// KeyEncipherment: the current certificate has that usage (kubeadm
	// gives it whatever the key), so the new one keeps it. It grants
	// nothing, so the plugin allows it for any key; RSA keys always get it.
	KeyEncipherment bool `json:"keyEncipherment,omitempty"`
}

// Backup is one transaction's backup folder on a node.
type Backup struct {
	Name    string    `json:"name"`
	Run     string    `json:"run,omitempty"`
	Action  string    `json:"action"`
	Created time.Time `json:"created"`
	// State is in-progress (a transaction that never ended: the next one
	// restores it), committed or restored.
	State string   `json:"state"`
	Paths []string `json:"paths,omitempty"`
}

// Backup states.
const (
	BackupInProgress = "in-progress"
	BackupCommitted  = "committed"
	BackupRestored   = "restored"
	// BackupRolledBack: committed, then undone by a rollback.
	BackupRolledBack = "rolled-back"
)

// KubeletProcess is the kubelet's state on the node.
type KubeletProcess struct {
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"startedAt"`
	Healthy   bool      `json:"healthy"`
}
