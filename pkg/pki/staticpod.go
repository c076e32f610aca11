package pki

import (
	"errors"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// ParseStaticPod parses a static pod manifest (kubeadm writes them to
// /etc/kubernetes/manifests) that has at least one container.
func ParseStaticPod(data []byte) (*corev1.Pod, error) {
	var pod corev1.Pod
	if err := yaml.Unmarshal(data, &pod); err != nil {
		return nil, err
	}
	if len(pod.Spec.Containers) == 0 {
		return nil, errors.New("has no container")
	}
	return &pod, nil
}

// ContainerFlags returns the --key=value flags of a container's command
// and arguments; of a flag given twice the last one counts, as on a command
// line.
func ContainerFlags(c corev1.Container) map[string]string {
	flags := map[string]string{}
	for _, arg := range append(append([]string{}, c.Command...), c.Args...) {
		if k, v, ok := strings.Cut(strings.TrimPrefix(arg, "--"), "="); ok && strings.HasPrefix(arg, "--") {
			flags[k] = v
		}
	}
	return flags
}
