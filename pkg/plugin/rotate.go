package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

const rotateExample = `  # Rotate every certificate on every node, keeping the CAs
  kubectl rotate-certs --all

  # Show what would be rotated, change nothing
  kubectl rotate-certs --all --dry-run

  # Rotate only etcd's certificates
  kubectl rotate-certs --service etcd

  # After a key leak: rotate everything and restart etcd and kube-apiserver too
  kubectl rotate-certs --all --restart=all

  # Renew the kubelet certificates of two nodes
  kubectl rotate-certs --service kubelet --nodes node-a,node-b`

// commonFlags are the node selection and agent flags every command shares.
type commonFlags struct {
	configFlags *genericclioptions.ConfigFlags
	factory     Factory
	genericiooptions.IOStreams
	nodes       []string
	selector    string
	image       string
	timeout     time.Duration
	parallelism string
	keepBackups int

	par orchestrator.Parallelism

	runner *orchestrator.Runner
	drain  context.Context
}

func (f *commonFlags) common() *commonFlags { return f }

// interrupted tells the user what an interrupt does now.
func (f *commonFlags) interrupted(s os.Signal) {
	msg := fmt.Sprintf("\n%s: starting nothing new", s)
	if f.runner != nil {
		if busy := f.runner.InFlight(); len(busy) > 0 {
			msg += fmt.Sprintf("; waiting up to %s for the change in progress on %s to end (interrupt again to stop waiting: the node still ends it on its own, all new files or all restored)",
				api.TransactionTimeout(f.timeout), strings.Join(busy, ", "))
		}
	}
	fmt.Fprintln(f.ErrOut, msg)
}

func (f *commonFlags) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&f.nodes, "nodes", nil, "Only these nodes (comma-separated or repeated)")
	cmd.Flags().StringVarP(&f.selector, "selector", "l", "", "Only nodes matching this label selector")
	cmd.Flags().StringVar(&f.image, "image", version.DefaultImage(), "Agent image run on the nodes (point it at your mirror in air-gapped clusters)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "Longest wait for any single step (pod start, component restart, CSR signing, node Ready)")
	cmd.Flags().StringVar(&f.parallelism, "parallelism", orchestrator.DefaultParallelism.String(), "Worker nodes changed at the same time, a count or a percentage of the selected workers (at least 2); one canary first, then more as they succeed; control planes always go one at a time")
}

// addChangeFlags are the flags of commands that change nodes.
func (f *commonFlags) addChangeFlags(cmd *cobra.Command) {
	cmd.Flags().IntVar(&f.keepBackups, "keep-backups", 3, "Runs whose backups each node keeps (they hold copies of replaced private keys; older ones are removed)")
}

func (f *commonFlags) validateChange() error {
	if f.keepBackups < 1 {
		return fmt.Errorf("--keep-backups must be at least 1 (the backup of the run itself), got %d", f.keepBackups)
	}
	return f.validate()
}

// connect builds the clients from the kubeconfig flags.
func (f *commonFlags) connect() error {
	client, err := f.factory.KubeClient()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	exec, err := f.factory.Executor()
	if err != nil {
		return err
	}
	f.runner = &orchestrator.Runner{
		Client: client, Exec: exec,
		Image: f.image, Log: progressLogger(f.ErrOut), Timeout: f.timeout, KeepBackups: f.keepBackups, Drain: f.drain,
	}
	return nil
}

func (f *commonFlags) validate() error {
	p, err := orchestrator.ParseParallelism(f.parallelism)
	if err != nil {
		return fmt.Errorf("--parallelism: %w", err)
	}
	f.par = p
	if f.timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %s", f.timeout)
	}
	if strings.TrimSpace(f.image) == "" {
		return errors.New("--image must name the agent image")
	}
	seen := map[string]bool{}
	var nodes []string
	for _, n := range f.nodes {
		n = strings.TrimSpace(n)
		if n == "" {
			return errors.New("--nodes contains an empty node name")
		}
		if !seen[n] {
			seen[n] = true
			nodes = append(nodes, n)
		}
	}
	f.nodes = nodes
	return nil
}

// RotateOptions are the options of "kubectl rotate-certs".
type RotateOptions struct {
	commonFlags
	all      bool
	services []string
	validity time.Duration
	restart  string
	dryRun   bool
	resume   bool
	output   string

	resolved []pki.Service
}

// NewRotateOptions returns options with defaults, whose clients
// newFactory (nil: NewFactory) makes.
func NewRotateOptions(streams genericiooptions.IOStreams, newFactory NewFactoryFunc) *RotateOptions {
	return &RotateOptions{commonFlags: newCommonFlags(streams, newFactory)}
}

func (o *RotateOptions) addFlags(cmd *cobra.Command) {
	o.commonFlags.addFlags(cmd)
	o.addChangeFlags(cmd)
	names := make([]string, len(pki.Services))
	for i, s := range pki.Services {
		names[i] = string(s)
	}
	cmd.Flags().BoolVar(&o.all, "all", false, "Rotate every service's certificates, and admin.conf/super-admin.conf")
	cmd.Flags().StringSliceVar(&o.services, "service", nil, "Service(s) to rotate: "+strings.Join(names, ", "))
	cmd.Flags().DurationVar(&o.validity, "validity", 8760*time.Hour, "Validity of the new certificates (capped at the CA's expiry)")
	cmd.Flags().StringVar(&o.restart, "restart", api.RestartNeeded, "needed: restart only what cannot reload (kube-controller-manager, kube-scheduler, kubelet); all: also restart etcd and kube-apiserver so no connection keeps an old certificate")
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "Print the plan (node, certificate, current expiry) through read-only pods and change nothing")
	cmd.Flags().BoolVar(&o.resume, "resume", true, "After an interrupted or failed run of the same services, skip what it already completed on each node")
	addOutputFlag(cmd, &o.output)
	o.configFlags.AddFlags(cmd.Flags())
	o.registerCompletions(cmd)
}

// Complete resolves --all and --service into the services to rotate.
func (o *RotateOptions) Complete() error {
	if o.all {
		o.resolved = append(append([]pki.Service{}, pki.Services...), pki.ServiceAdmin)
	}
	seen := map[pki.Service]bool{}
	for _, name := range o.services {
		s, err := pki.ParseService(name)
		if err != nil {
			return err
		}
		if !seen[s] {
			seen[s] = true
			o.resolved = append(o.resolved, s)
		}
	}
	pki.SortServices(o.resolved)
	return nil
}

// Validate rejects bad input before anything touches the cluster.
func (o *RotateOptions) Validate() error {
	if o.all && len(o.services) > 0 {
		return errors.New("--all and --service exclude each other: use one")
	}
	if !o.all && len(o.services) == 0 {
		return errors.New("say what to rotate: --all, or --service with one or more services")
	}
	if o.restart != api.RestartNeeded && o.restart != api.RestartAll {
		return fmt.Errorf("--restart must be %q or %q, got %q", api.RestartNeeded, api.RestartAll, o.restart)
	}
	if o.validity < time.Hour {
		return fmt.Errorf("--validity must be at least 1h, got %s", o.validity)
	}
	if o.validity > orchestrator.MaxValidity {
		return fmt.Errorf("--validity %s is longer than a CertificateSigningRequest can ask for (%s, its expirationSeconds is an int32); use a shorter one", o.validity, orchestrator.MaxValidity)
	}
	if err := validateOutput(o.output); err != nil {
		return err
	}
	return o.validateChange()
}

// Run rotates and prints the report: progress on stderr, the table (or,
// with -o, the RotationReport) on stdout, also when the run failed part-way.
func (o *RotateOptions) Run(ctx context.Context) error {
	if err := o.connect(); err != nil {
		return err
	}
	rep, err := o.runner.Rotate(ctx, orchestrator.RotateOptions{
		Services: o.resolved, NodeNames: o.nodes, Selector: o.selector, Validity: o.validity,
		Restart: o.restart, Parallelism: o.par, DryRun: o.dryRun, Resume: o.resume,
	})
	return printRun(o.Out, o.ErrOut, o.output, report.KindRotation, rep, err)
}
