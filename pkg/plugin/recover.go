package plugin

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/transport"
	sshtransport "github.com/rotate-certs/kubectl-rotate-certs/pkg/transport/ssh"
)

// RecoverOptions are the options of "kubectl rotate-certs recover".
type RecoverOptions struct {
	commonFlags
	kindCluster     string
	sshTargets      string
	local           bool
	ssh             sshtransport.Options
	agentBinary     string
	writeKubeconfig string
	kubeconfig      string
	server          string
	validity        time.Duration
	dryRun          bool
	output          string

	kind  *transport.Kind
	nodes []transport.Node
}

// NewCmdRecover builds "kubectl rotate-certs recover".
func NewCmdRecover(streams genericiooptions.IOStreams) *cobra.Command {
	o := &RecoverOptions{commonFlags: commonFlags{IOStreams: streams}}
	cmd := &cobra.Command{
		Use:   "recover (--kind-cluster NAME | --ssh [USER@]HOST[,...] | --local)",
		Short: "Bring back a cluster whose certificates already expired, without its API",
		Long: `Bring back a cluster whose certificates already expired: kubectl fails with
"x509: certificate has expired or is not yet valid", kube-apiserver
crash-loops, the kubelets cannot load their kubeconfig. The API cannot start
agent pods, so the agent (this binary, checked by sha256) is copied to every
node through kind, SSH, or run on this node, and:

  1. inspects and plans every node first (nothing is written while any node
     has a problem: a node that is not kubeadm's, a corrupt file, an expired
     CA);
  2. renews, on each control plane, every certificate and kubeconfig --all
     renews, with the same CAs, keeping subjects, names, usages and key
     algorithms, and creates what the static pods reference but is missing
     (front-proxy CA and client, etcd's healthcheck client); the kubelet's
     client certificate is signed there by the cluster CA;
  3. restarts each control plane's components and kubelet without the API and
     proves etcd and kube-apiserver serve the new certificates;
  4. gets every worker's kubelet a client certificate: key and request made
     on the worker, signed by a control plane (the CA key never moves);
  5. checks through the recovered API that every node is Ready.

Every node is backed up before it changes and restored if its step fails.
Give it every node of the cluster. It also does no harm to a cluster whose
API still works.`,
		Example: `  # A kind cluster (its kubeconfig context is refreshed, like kind export kubeconfig)
  kubectl rotate-certs recover --kind-cluster dev

  # Nodes over SSH (host keys checked against ~/.ssh/known_hosts; sudo -n for non-root users)
  kubectl rotate-certs recover --ssh admin@cp1,admin@cp2,admin@w1 --write-kubeconfig ./admin.conf

  # Show the plan only
  kubectl rotate-certs recover --kind-cluster dev --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return run(o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.kindCluster, "kind-cluster", "", "Recover the nodes of this kind cluster (reached through kind)")
	f.StringVar(&o.sshTargets, "ssh", "", "Recover these nodes over SSH: [USER@]HOST[:PORT], comma-separated, every node of the cluster")
	f.BoolVar(&o.local, "local", false, "Recover this node, run as root on it")
	f.StringVar(&o.ssh.User, "ssh-user", "", "SSH user where a host does not name one (default: your user)")
	f.StringVar(&o.ssh.KeyFile, "ssh-key", "", "SSH private key file (an encrypted key must be in ssh-agent)")
	f.StringVar(&o.ssh.KnownHosts, "ssh-known-hosts", "", "known_hosts file the nodes' host keys are checked against (default ~/.ssh/known_hosts)")
	f.BoolVar(&o.ssh.InsecureIgnoreHostKey, "ssh-insecure-ignore-host-key", false, "Do not check the nodes' host keys (anyone on the path could pose as a node)")
	f.StringVar(&o.ssh.Bastion, "ssh-bastion", "", "Jump host to reach the nodes through, [USER@]HOST[:PORT] (ssh's ProxyJump)")
	f.StringVar(&o.agentBinary, "agent-binary", "", "kubectl-rotate_certs built for the nodes (linux/amd64 or linux/arm64) when this one is not (default: this binary)")
	f.StringVar(&o.writeKubeconfig, "write-kubeconfig", "", "Write the renewed admin.conf here (0600), its server as it was (--ssh, --local)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig whose kind-<cluster> context is refreshed (--kind-cluster; default as kind: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.server, "server", "", "API server to check the recovered cluster through, when admin.conf's is not reachable from here (--ssh, --local)")
	f.DurationVar(&o.validity, "validity", 8760*time.Hour, "Validity of the new certificates (capped at the CA's expiry)")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "Longest wait for any single step")
	f.StringVar(&o.parallelism, "parallelism", orchestrator.DefaultParallelism.String(), "Worker nodes worked on at the same time, a count or a percentage (at least 2); control planes always go one at a time")
	f.BoolVar(&o.dryRun, "dry-run", false, "Print the plan and change nothing")
	addOutputFlag(cmd, &o.output)
	o.addChangeFlags(cmd)
	_ = cmd.RegisterFlagCompletionFunc("output", fixedCompletions(outputFormats...))
	return cmd
}

// Complete has nothing to fill in.
func (o *RecoverOptions) Complete() error { return nil }

// Validate checks the flags before any node is reached.
func (o *RecoverOptions) Validate() error {
	given := 0
	for _, b := range []bool{o.kindCluster != "", o.sshTargets != "", o.local} {
		if b {
			given++
		}
	}
	if given != 1 {
		return errors.New("say how to reach the nodes: exactly one of --kind-cluster NAME, --ssh HOSTS or --local")
	}
	if o.sshTargets != "" {
		if _, err := sshtransport.ParseTargets(o.sshTargets); err != nil {
			return fmt.Errorf("--ssh: %w", err)
		}
	}
	if o.writeKubeconfig != "" && o.kindCluster != "" {
		return errors.New("--write-kubeconfig is for --ssh and --local; with --kind-cluster the kind context of --kubeconfig is refreshed")
	}
	if o.server != "" && o.kindCluster != "" {
		return errors.New("--server is for --ssh and --local; kind's own address is used with --kind-cluster")
	}
	if o.kubeconfig != "" && o.kindCluster == "" {
		return errors.New("--kubeconfig is for --kind-cluster; with --ssh or --local use --write-kubeconfig")
	}
	if o.validity < time.Hour || o.validity > orchestrator.MaxValidity {
		return fmt.Errorf("--validity must be between 1h and %s, got %s", orchestrator.MaxValidity, o.validity)
	}
	if o.timeout <= 0 {
		return errors.New("--timeout must be positive")
	}
	p, err := orchestrator.ParseParallelism(o.parallelism)
	if err != nil {
		return fmt.Errorf("--parallelism: %w", err)
	}
	o.par = p
	if o.keepBackups < 1 {
		return fmt.Errorf("--keep-backups must be at least 1, got %d", o.keepBackups)
	}
	return validateOutput(o.output)
}

// Run reaches the nodes and recovers them.
func (o *RecoverOptions) Run(ctx context.Context) error {
	defer func() {
		for _, n := range o.nodes {
			_ = n.Close()
		}
	}()
	if err := o.reachNodes(ctx); err != nil {
		return err
	}
	o.runner = &orchestrator.Runner{Log: progressLogger(o.ErrOut), Timeout: o.timeout, KeepBackups: o.keepBackups, Drain: o.drain}
	rep, err := o.runner.Recover(ctx, orchestrator.RecoverOptions{
		Nodes: o.nodes, Agent: o.agentFor, Validity: o.validity, Parallelism: o.par, DryRun: o.dryRun, Connect: o.connectRecovered,
	})
	if err == nil && !o.dryRun {
		if err = o.handBack(rep); err == nil {
			fmt.Fprintf(o.ErrOut, "recovered: every node Ready %s after the start\n", rep.Ready.Round(time.Second))
		}
	}
	var r *orchestrator.Report
	if rep != nil {
		r = &rep.Report
	}
	return printRun(o.Out, o.ErrOut, o.output, report.KindRecover, r, err)
}

// reachNodes opens the chosen transport's nodes.
func (o *RecoverOptions) reachNodes(ctx context.Context) error {
	switch {
	case o.kindCluster != "":
		k, err := transport.NewKind(o.kindCluster)
		if err != nil {
			return err
		}
		o.kind = k
		o.nodes, err = k.Nodes()
		return err
	case o.local:
		n, err := transport.Local()
		if err != nil {
			return err
		}
		o.nodes = []transport.Node{n}
		return nil
	}
	targets, err := sshtransport.ParseTargets(o.sshTargets)
	if err != nil {
		return err
	}
	o.ssh.UseAgent = os.Getenv("SSH_AUTH_SOCK") != ""
	o.ssh.Timeout = min(o.timeout, sshtransport.DefaultTimeout)
	var errs []error
	for _, t := range targets {
		n, err := sshtransport.Dial(ctx, t, o.ssh)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o.nodes = append(o.nodes, n)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w\nno file on any node was changed", err)
	}
	return nil
}

// agentFor returns the agent binary for a node's machine (`uname -m`):
// --agent-binary, or this binary when it was built for that machine.
func (o *RecoverOptions) agentFor(machine string) ([]byte, error) {
	goarch := map[string]string{"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[machine]
	if goarch == "" {
		return nil, fmt.Errorf("machine %q: the agent is built for linux/amd64 and linux/arm64", machine)
	}
	path := o.agentBinary
	if path == "" {
		if runtime.GOOS != "linux" || runtime.GOARCH != goarch {
			return nil, fmt.Errorf("this plugin is built for %s/%s and the node is linux/%s: pass --agent-binary with the linux/%s kubectl-rotate_certs of this version (from its release archive)", runtime.GOOS, runtime.GOARCH, goarch, goarch)
		}
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		path = self
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--agent-binary %s: not a linux executable: %w", path, err)
	}
	defer f.Close()
	if want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[goarch]; f.Machine != want {
		return nil, fmt.Errorf("%s is built for %s, the node is linux/%s", path, f.Machine, goarch)
	}
	return os.ReadFile(path)
}

// connectRecovered makes a client for the recovered API: kind's own
// kubeconfig for this machine, or the renewed admin.conf as it is.
func (o *RecoverOptions) connectRecovered(adminConf []byte) (kubernetes.Interface, error) {
	if o.kind != nil {
		kc, err := o.kind.KubeConfig()
		if err != nil {
			return nil, err
		}
		adminConf = []byte(kc)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(adminConf)
	if err != nil {
		return nil, err
	}
	if o.server != "" {
		cfg.Host = o.server
	}
	cfg.Timeout = 30 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// handBack gives the user the way back in and says which one it was.
func (o *RecoverOptions) handBack(rep *orchestrator.RecoverReport) error {
	if o.kind != nil {
		if err := o.kind.ExportKubeConfig(o.kubeconfig); err != nil {
			return fmt.Errorf("refreshing the kind-%s context: %w", o.kindCluster, err)
		}
		where := o.kubeconfig
		if where == "" {
			where = "your kubeconfig ($KUBECONFIG or ~/.kube/config)"
		}
		fmt.Fprintf(o.ErrOut, "refreshed context kind-%s in %s with the renewed admin credentials\n", o.kindCluster, where)
		return nil
	}
	if o.writeKubeconfig == "" {
		fmt.Fprintln(o.ErrOut, "the renewed admin credentials are in /etc/kubernetes/admin.conf on the control planes (--write-kubeconfig FILE copies them here)")
		return nil
	}
	dir := filepath.Dir(o.writeKubeconfig)
	tmp, err := os.CreateTemp(dir, ".admin.conf-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := errors.Join(tmp.Chmod(0o600), writeAll(tmp, rep.AdminKubeconfig), tmp.Close()); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), o.writeKubeconfig); err != nil {
		return err
	}
	fmt.Fprintf(o.ErrOut, "wrote the renewed admin.conf to %s (0600; server %s)\n", o.writeKubeconfig, serverOf(rep.AdminKubeconfig))
	return nil
}

func writeAll(f *os.File, b []byte) error {
	_, err := f.Write(b)
	return err
}

func serverOf(kubeconfig []byte) string {
	cfg, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return "unknown"
	}
	var servers []string
	for _, c := range cfg.Clusters {
		servers = append(servers, c.Server)
	}
	return strings.Join(servers, ", ")
}
