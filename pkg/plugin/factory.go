package plugin

import (
	"fmt"
	"os"
	"sync"

	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
)

// Factory makes a command's cluster clients from its kubeconfig flags
// (--kubeconfig, --context, ...), as parsed for the command line: for Run
// and for shell completion alike. Commands hold one in their options, as
// cmctl does, so both are tested against fakes.
type Factory interface {
	// KubeClient is the clientset of the cluster the flags select.
	KubeClient() (kubernetes.Interface, error)
	// Executor runs commands in that cluster's pods (pods/exec).
	Executor() (orchestrator.Executor, error)
	// RawKubeConfig is the merged kubeconfig, for completing contexts.
	RawKubeConfig() (clientcmdapi.Config, error)
	// RESTConfig is the client configuration the flags select.
	RESTConfig() (*rest.Config, error)
	// TrustCAs has the clients made from now on trust these CAs (PEM) as
	// well as the kubeconfig's: a CA rotation's new CA, whose serving
	// certificates the API server presents once its issuers switched.
	TrustCAs(pem []byte) error
}

// NewFactoryFunc makes a command's Factory from its kubeconfig flags.
type NewFactoryFunc func(*genericclioptions.ConfigFlags) Factory

// NewFactory is the Factory of real clusters.
func NewFactory(flags *genericclioptions.ConfigFlags) Factory {
	return &kubeFactory{flags: flags}
}

type kubeFactory struct {
	flags  *genericclioptions.ConfigFlags
	once   sync.Once
	config *rest.Config
	client kubernetes.Interface
	err    error
}

func (f *kubeFactory) init() error {
	f.once.Do(func() {
		if f.config, f.err = f.flags.ToRESTConfig(); f.err != nil {
			return
		}
		f.client, f.err = kubernetes.NewForConfig(f.config)
	})
	return f.err
}

func (f *kubeFactory) KubeClient() (kubernetes.Interface, error) {
	if err := f.init(); err != nil {
		return nil, err
	}
	return f.client, nil
}

func (f *kubeFactory) Executor() (orchestrator.Executor, error) {
	if err := f.init(); err != nil {
		return nil, err
	}
	return orchestrator.NewExecutor(f.config, f.client), nil
}

func (f *kubeFactory) RESTConfig() (*rest.Config, error) {
	if err := f.init(); err != nil {
		return nil, err
	}
	return rest.CopyConfig(f.config), nil
}

func (f *kubeFactory) TrustCAs(extra []byte) error {
	if err := f.init(); err != nil {
		return err
	}
	cfg := rest.CopyConfig(f.config)
	current := cfg.CAData
	if len(current) == 0 && cfg.CAFile != "" {
		data, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fmt.Errorf("reading the kubeconfig's CA file: %w", err)
		}
		current = data
	}
	if cfg.Insecure {
		return nil // trusts anything already
	}
	cfg.CAData, cfg.CAFile = append(append(append([]byte{}, current...), '\n'), extra...), ""
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	f.config, f.client = cfg, client
	return nil
}

func (f *kubeFactory) RawKubeConfig() (clientcmdapi.Config, error) {
	return f.flags.ToRawKubeConfigLoader().RawConfig()
}

// newCommonFlags returns the shared flags of a command that reaches the
// cluster through the API, with the Factory newFactory (nil: NewFactory)
// makes from its kubeconfig flags.
func newCommonFlags(streams genericiooptions.IOStreams, newFactory NewFactoryFunc) commonFlags {
	if newFactory == nil {
		newFactory = NewFactory
	}
	flags := genericclioptions.NewConfigFlags(true)
	return commonFlags{configFlags: flags, factory: newFactory(flags), IOStreams: streams}
}
