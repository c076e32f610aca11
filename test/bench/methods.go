//go:build bench

package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/rotate-certs/kubectl-rotate-certs/test/bench/report"
)

// manualOut is where the manual procedure parks the manifests.
const manualOut = "/root/rc-bench-manifests"

// manual is kubeadm's documented procedure (kubernetes.io, "Certificate
// Management with kubeadm", manual certificate renewal), on each control
// plane in turn, through the node container: `kubeadm certs renew all`;
// the static pods restarted by moving their manifests out of
// /etc/kubernetes/manifests, waiting the kubelet's fileCheckFrequency, and
// moving them back; the script then waits until the node's control plane
// runs again (new containers, kube-apiserver ready, etcd healthy) before
// the next node. Finally the renewed admin.conf replaces the load client's
// kubeconfig, as the documentation says to copy it to $HOME/.kube/config.
func (s *session) manual(ctx context.Context, m *report.Method) error {
	freq, note := s.fileCheckFrequency(ctx, s.cps[0])
	m.Notes = append(m.Notes, note)
	step := func(node, name string, f func() (string, error)) error {
		st := report.Step{Node: node, Name: name, From: s.now()}
		logf("%s: manual: %s on %s", s.c.Name(), name, node)
		detail, err := f()
		st.To = s.now()
		st.Detail = strings.TrimSpace(detail)
		if len(st.Detail) > 300 {
			st.Detail = st.Detail[len(st.Detail)-300:]
		}
		m.Steps = append(m.Steps, st)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", name, node, err)
		}
		return nil
	}
	for _, cp := range s.cps {
		before, err := s.staticIDs(ctx, cp)
		if err != nil {
			return err
		}
		if err := step(cp, "renew", func() (string, error) {
			out, err := s.c.Exec(ctx, cp, nil, "kubeadm", "certs", "renew", "all")
			return lastLine(out), err
		}); err != nil {
			return err
		}
		if err := step(cp, "manifests out", func() (string, error) {
			_, err := s.c.Exec(ctx, cp, nil, "sh", "-c", "mkdir -p "+manualOut+" && mv /etc/kubernetes/manifests/*.yaml "+manualOut+"/")
			if err != nil {
				return "", err
			}
			time.Sleep(freq)
			return fmt.Sprintf("moved out, waited %s", freq), nil
		}); err != nil {
			return err
		}
		if err := step(cp, "manifests back", func() (string, error) {
			if _, err := s.c.Exec(ctx, cp, nil, "sh", "-c", "mv "+manualOut+"/*.yaml /etc/kubernetes/manifests/"); err != nil {
				return "", err
			}
			deadline := time.Now().Add(5 * time.Minute)
			for {
				err := s.nodeHealthy(ctx, cp, before)
				if err == nil {
					return "moved back; new containers run, kube-apiserver ready, etcd healthy", nil
				}
				if time.Now().After(deadline) {
					return "", fmt.Errorf("control plane not back after 5 minutes: %w", err)
				}
				time.Sleep(500 * time.Millisecond)
			}
		}); err != nil {
			return err
		}
	}
	return step(s.cps[0], "admin kubeconfig", func() (string, error) {
		return s.refreshAdminKubeconfig(ctx, s.cps[0])
	})
}

// refreshAdminKubeconfig copies the node's renewed admin.conf with its
// server set to the kubeconfig's (the host's way in, as kind export
// kubeconfig does) and has the load client use it.
func (s *session) refreshAdminKubeconfig(ctx context.Context, node string) (string, error) {
	raw, err := s.c.Exec(ctx, node, nil, "cat", "/etc/kubernetes/admin.conf")
	if err != nil {
		return "", err
	}
	cfg, err := clientcmd.Load(raw)
	if err != nil {
		return "", err
	}
	for _, cl := range cfg.Clusters {
		cl.Server = s.config.Host
	}
	path := filepath.Join(s.t.TempDir(), "admin.conf")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return "", err
	}
	if err := s.load.use(rc); err != nil {
		return "", err
	}
	text := fmt.Sprintf("switched to %s's renewed admin.conf (server %s)", node, s.config.Host)
	s.rec.Load.Switches = append(s.rec.Load.Switches, report.Event{T: s.now(), Text: text})
	return text, nil
}

// fileCheckFrequency is the kubelet's (its config.yaml; 0 or absent means
// the default, 20 s).
func (s *session) fileCheckFrequency(ctx context.Context, node string) (time.Duration, string) {
	out, err := s.c.Exec(ctx, node, nil, "cat", "/var/lib/kubelet/config.yaml")
	if err == nil {
		var cfg struct {
			FileCheckFrequency string `json:"fileCheckFrequency"`
		}
		if yaml.Unmarshal(out, &cfg) == nil {
			if d, err := time.ParseDuration(cfg.FileCheckFrequency); err == nil && d > 0 {
				return d, fmt.Sprintf("kubelet fileCheckFrequency %s (its config.yaml)", d)
			}
			return 20 * time.Second, fmt.Sprintf("kubelet fileCheckFrequency %q in its config.yaml: the default, 20s", cfg.FileCheckFrequency)
		}
	}
	return 20 * time.Second, "kubelet fileCheckFrequency: the default, 20s"
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// plugin runs the plugin binary against the cluster, timestamping each
// progress line (stderr) as it arrives, and records its peak RSS.
func (s *session) plugin(ctx context.Context, m *report.Method, args ...string) error {
	args = append(args, "--kubeconfig", s.c.KubeconfigPath(), "--image", agentImage)
	m.Command = "kubectl rotate-certs " + strings.Join(args[:len(args)-4], " ")
	m.Notes = append(m.Notes, fmt.Sprintf("ran `%s %s` (the kind kubeconfig; --image: the agent image built for this version)", filepath.Base(pluginBin), strings.Join(args, " ")))
	cmd := exec.CommandContext(ctx, pluginBin, args...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			m.Lines = append(m.Lines, report.Event{T: s.now(), Text: line})
			fmt.Fprintf(os.Stderr, "%s plugin: %s\n", time.Now().Format("15:04:05.000"), line)
		}
	}()
	wg.Wait()
	err = cmd.Wait()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.PluginMaxRSSKiB = ru.Maxrss
	}
	if err != nil {
		return fmt.Errorf("%s: %w", m.Command, err)
	}
	return nil
}
