// Command e2e-cni is the pod network of the project's kind e2e clusters (kind's own kindnetd
// cannot be built offline). It runs as a hostNetwork DaemonSet on every node and
//   - writes a ptp + host-local CNI conflist for the node's spec.podCIDR, and
//   - routes every other node's podCIDR via that node's InternalIP (all kind nodes share one
//     docker network, so the next hop is always on-link).
//
// It only needs get/list on nodes and the CNI plugins the node image ships in /opt/cni/bin.
//
// With -probe-api it is something else: the e2e suite's in-cluster API client, which
// reads /version through its in-cluster config (ServiceAccount token, kube-root-ca.crt)
// and appends every failed request to -probe-log (a hostPath file, so the count
// survives the pod's restarts).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func main() {
	confDir := flag.String("cni-conf-dir", "/etc/cni/net.d", "directory the node's container runtime reads CNI configurations from")
	confName := flag.String("cni-conf-name", "10-e2e-cni.conflist", "file name of the configuration written")
	interval := flag.Duration("interval", 5*time.Second, "how often nodes are re-read")
	probe := flag.Duration("probe-api", 0, "instead of the pod network: read /version through the in-cluster config this often")
	probeLog := flag.String("probe-log", "/probe/failures.log", "with -probe-api: the file each failed request is appended to")
	flag.Parse()
	if *probe > 0 {
		probeAPI(*probe, *probeLog)
		return
	}
	nodeName := os.Getenv("NODE_NAME")
	if nodeName == "" {
		log.Fatal("NODE_NAME must be set (downward API spec.nodeName)")
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		log.Fatalf("in-cluster config: %v", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		log.Printf("enabling ip_forward: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	r := &reconciler{client: client, node: nodeName, confPath: filepath.Join(*confDir, *confName), routes: map[string]string{}}
	for {
		wait := *interval
		if err := r.sync(ctx); err != nil {
			log.Printf("sync: %v", err)
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

type reconciler struct {
	client   kubernetes.Interface
	node     string
	confPath string
	routes   map[string]string // podCIDR -> gateway, as last installed
}

func (r *reconciler) sync(ctx context.Context) error {
	nodes, err := r.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var errs []error
	for i := range nodes.Items {
		n := &nodes.Items[i]
		cidr := n.Spec.PodCIDR
		if cidr == "" {
			continue
		}
		if n.Name == r.node {
			if err := writeConflist(r.confPath, cidr); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		gw := internalIP(n)
		if gw == nil {
			continue
		}
		_, dst, err := net.ParseCIDR(cidr)
		if err != nil || dst.IP.To4() == nil {
			continue // IPv4 only
		}
		if r.routes[cidr] == gw.String() {
			continue
		}
		if err := replaceRoute(dst, gw); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s (%s): %w", cidr, gw, n.Name, err))
			continue
		}
		r.routes[cidr] = gw.String()
		log.Printf("route %s via %s (node %s)", cidr, gw, n.Name)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%v", errs)
	}
	return nil
}

func internalIP(n *corev1.Node) net.IP {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			if ip := net.ParseIP(a.Address).To4(); ip != nil {
				return ip
			}
		}
	}
	return nil
}

// writeConflist writes the node's CNI configuration atomically, only when it changes.
func writeConflist(path, podCIDR string) error {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "e2e-cni",
		"plugins": []any{
			map[string]any{
				"type":   "ptp",
				"ipMasq": true, // pods reach the node's upstream DNS and the outside through the node IP
				"mtu":    1500,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": podCIDR}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": "/run/cni-ipam-state",
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	log.Printf("wrote %s for podCIDR %s", path, podCIDR)
	return nil
}

// probeAPI reads /version through the in-cluster config every interval until
// SIGTERM, appending a line for each failed request (and one when it
// starts) to path.
func probeAPI(interval time.Duration, path string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		log.Fatalf("probe log: %v", err)
	}
	defer f.Close()
	note := func(format string, args ...any) {
		line := fmt.Sprintf("%s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), os.Getenv("POD_NAME"), fmt.Sprintf(format, args...))
		_, _ = f.WriteString(line)
		log.Print(line)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		note("FAIL in-cluster config: %v", err)
		os.Exit(1)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		note("FAIL client: %v", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	note("START probing %s every %s", cfg.Host, interval)
	ok := 0
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := client.Discovery().RESTClient().Get().AbsPath("/version").Do(rctx).Error()
		cancel()
		switch {
		case err == nil:
			ok++
		case ctx.Err() == nil:
			note("FAIL %v", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
	note("STOP after %d successful requests", ok)
}
