// Command democluster creates (or deletes) the local kind cluster of
// `make demo` through the e2e framework, so the demo runs on exactly the
// clusters the tests use (offline node image where needed).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	kindcluster "sigs.k8s.io/kind/pkg/cluster"

	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

func main() {
	name := flag.String("name", "rotate-certs-demo", "kind cluster name")
	kubeconfig := flag.String("kubeconfig", "", "where to write the cluster's kubeconfig")
	workers := flag.Int("workers", 1, "worker nodes")
	image := flag.String("load-image", "", "local docker image to load into the nodes (the agent image)")
	del := flag.Bool("delete", false, "delete the cluster instead of creating it")
	flag.Parse()
	if err := run(*name, *kubeconfig, *workers, *image, *del); err != nil {
		fmt.Fprintln(os.Stderr, "democluster:", err)
		os.Exit(1)
	}
}

func run(name, kubeconfig string, workers int, image string, del bool) error {
	if del {
		return kindcluster.NewProvider().Delete(name, kubeconfig)
	}
	if kubeconfig == "" {
		return fmt.Errorf("-kubeconfig is required")
	}
	ctx := context.Background()
	c, err := framework.CreateCluster(ctx, framework.Options{Name: name, ControlPlanes: 1, Workers: workers, KubeconfigPath: kubeconfig}, os.Stderr)
	if err != nil {
		return err
	}
	if image != "" {
		return c.LoadImage(ctx, image)
	}
	return nil
}
