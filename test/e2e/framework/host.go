package framework

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

// KubeVersionEnv names the environment variable holding the Kubernetes version of the node image
// (hack/e2e.sh sets it from KUBE_VERSION).
const KubeVersionEnv = "ROTATE_CERTS_KUBE_VERSION"

var kubeVersionRE = regexp.MustCompile(`v1\.(\d+)\.\d+`)

// KubeVersion returns the Kubernetes version of the node image and its minor: from
// $ROTATE_CERTS_KUBE_VERSION, else from the image reference (rotate-certs/kind-node:v1.37.2-<hash>,
// kindest/node:v1.37.2@sha256:...). ok is false when neither names one.
func KubeVersion() (version string, minor int, ok bool) {
	for _, s := range []string{os.Getenv(KubeVersionEnv), NodeImageFromEnv()} {
		if m := kubeVersionRE.FindStringSubmatch(s); m != nil {
			_, _ = fmt.Sscan(m[1], &minor)
			return m[0], minor, true
		}
	}
	return "", 0, false
}

// cgroupV1Patches configure kubeadm and the kubelet for a cgroup v1 host. From Kubernetes 1.35 the
// kubelet refuses to start on cgroup v1 unless failCgroupV1 is false (KEP-5573), and kubeadm's
// SystemVerification preflight check fails there (kind skips the preflight phase today; the
// setting keeps any kubeadm preflight on these nodes, e.g. a later join, from failing). No
// apiVersion: kind then applies them to whichever kubeadm API version it writes.
var cgroupV1Patches = []string{
	"kind: KubeletConfiguration\nfailCgroupV1: false\n",
	"kind: InitConfiguration\nnodeRegistration:\n  ignorePreflightErrors: [SystemVerification]\n",
	"kind: JoinConfiguration\nnodeRegistration:\n  ignorePreflightErrors: [SystemVerification]\n",
}

// hostKubeadmPatches returns the patches this host needs: cgroupV1Patches when Docker reports
// cgroup v1 (which the node containers then see), none on cgroup v2.
func hostKubeadmPatches(ctx context.Context, log io.Writer) ([]string, error) {
	v, err := DockerCgroupVersion(ctx)
	if err != nil {
		return nil, err
	}
	if v != "1" {
		return nil, nil
	}
	logf(log, "host runs cgroup v1: kubelet failCgroupV1=false, kubeadm preflight SystemVerification ignored")
	return append([]string{}, cgroupV1Patches...), nil
}

// DockerCgroupVersion is the cgroup version of the Docker daemon's host ("1" or "2").
func DockerCgroupVersion(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.CgroupVersion}}").Output()
	if err != nil {
		return "", fmt.Errorf("docker info: %w", err)
	}
	v := strings.TrimSpace(string(out))
	if v != "1" && v != "2" {
		return "", fmt.Errorf("docker info reports cgroup version %q", v)
	}
	return v, nil
}
