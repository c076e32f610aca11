package framework

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// CNIImageEnv names an optional, already built pod network image; without it the image is
// built from test/e2e/cni/cmd/e2e-cni (go build + FROM scratch) and tagged by content hash.
const CNIImageEnv = "ROTATE_CERTS_CNI_IMAGE"

const (
	cniPackage = "github.com/rotate-certs/kubectl-rotate-certs/test/e2e/cni/cmd/e2e-cni"
	cniName    = "e2e-cni"
	cniNS      = "kube-system"
)

// ensureCNIImage builds the pod network binary (fast when the Go build cache is warm) and a
// docker image tagged with the binary's hash, unless that tag already exists.
func ensureCNIImage(ctx context.Context, log io.Writer) (string, error) {
	if img := strings.TrimSpace(os.Getenv(CNIImageEnv)); img != "" {
		return img, nil
	}
	dir, err := os.MkdirTemp("", "rotate-certs-cni-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, cniName)
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, cniPackage)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", cniPackage, err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	image := "rotate-certs/e2e-cni:" + hex.EncodeToString(sum[:])[:16]
	if exec.CommandContext(ctx, "docker", "image", "inspect", image).Run() == nil {
		return image, nil
	}
	dockerfile := "FROM scratch\nCOPY " + cniName + " /" + cniName + "\nENTRYPOINT [\"/" + cniName + "\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "docker", "build", "-q", "-t", image, dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("docker build %s: %w: %s", image, err, out)
	}
	logf(log, "built pod network image %s", image)
	return image, nil
}

// installCNI creates the pod network's RBAC and DaemonSet (hostNetwork, on every node).
func installCNI(ctx context.Context, client kubernetes.Interface, image string) error {
	labels := map[string]string{"app": cniName}
	privileged := true
	objects := []func() error{
		func() error {
			_, err := client.CoreV1().ServiceAccounts(cniNS).Create(ctx, &corev1.ServiceAccount{
				ObjectMeta: metav1.ObjectMeta{Name: cniName, Namespace: cniNS},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: cniName},
				Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: cniName},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: cniName},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: cniName, Namespace: cniNS}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := client.AppsV1().DaemonSets(cniNS).Create(ctx, &appsv1.DaemonSet{
				ObjectMeta: metav1.ObjectMeta{Name: cniName, Namespace: cniNS, Labels: labels},
				Spec: appsv1.DaemonSetSpec{
					Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{
							ServiceAccountName: cniName,
							HostNetwork:        true,
							PriorityClassName:  "system-node-critical",
							Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
							Containers: []corev1.Container{{
								Name:            cniName,
								Image:           image,
								ImagePullPolicy: corev1.PullNever,
								Env: []corev1.EnvVar{{
									Name:      "NODE_NAME",
									ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}},
								}},
								SecurityContext: &corev1.SecurityContext{Privileged: &privileged},
								VolumeMounts:    []corev1.VolumeMount{{Name: "cni-conf", MountPath: "/etc/cni/net.d"}},
							}},
							Volumes: []corev1.Volume{{
								Name:         "cni-conf",
								VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc/cni/net.d"}},
							}},
						},
					},
				},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for _, create := range objects {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}
