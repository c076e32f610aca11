package orchestrator

import (
	"context"
	"fmt"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// signCSR submits a request generated on a node, approves it (the plugin
// vouches for it: the request came from that node's agent, for that node's
// identity) and waits for the cluster's signer. The CSR object is deleted
// afterwards; only the public certificate is returned.
func (r *Runner) signCSR(ctx context.Context, node, runID string, c api.CSR, validity time.Duration) (string, error) {
	usages := make([]certificatesv1.KeyUsage, len(c.Usages))
	for i, u := range c.Usages {
		usages[i] = certificatesv1.KeyUsage(u)
	}
	csr := &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "rotate-certs-" + truncate(node, 40) + "-",
			Labels:       map[string]string{LabelApp: AppName, LabelRun: runID},
		},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    []byte(c.Request),
			SignerName: c.SignerName,
			Usages:     usages,
		},
	}
	if s := int32(validity / time.Second); s >= 600 {
		csr.Spec.ExpirationSeconds = ptr.To(s)
	}
	csrs := r.Client.CertificatesV1().CertificateSigningRequests()
	created, err := csrs.Create(ctx, csr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("node %s: creating the %s CertificateSigningRequest: %w", node, c.Name, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = csrs.Delete(dctx, created.Name, metav1.DeleteOptions{})
	}()
	// Controllers may touch a fresh CSR (a conflict then); approve the
	// latest version, unless something already approved it.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		latest, err := csrs.Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range latest.Status.Conditions {
			if c.Type == certificatesv1.CertificateApproved && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		latest.Status.Conditions = append(latest.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type:           certificatesv1.CertificateApproved,
			Status:         corev1.ConditionTrue,
			Reason:         "RotateCertsApproved",
			Message:        "approved by kubectl rotate-certs for node " + node,
			LastUpdateTime: metav1.Now(),
		})
		_, err = csrs.UpdateApproval(ctx, created.Name, latest, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("node %s: approving CertificateSigningRequest %s (needs approve on signer %s): %w", node, created.Name, c.SignerName, err)
	}
	var cert []byte
	err = wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		got, err := csrs.Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, cond := range got.Status.Conditions {
			if (cond.Type == certificatesv1.CertificateDenied || cond.Type == certificatesv1.CertificateFailed) && cond.Status == corev1.ConditionTrue {
				return false, fmt.Errorf("CertificateSigningRequest %s %s: %s", created.Name, cond.Type, cond.Message)
			}
		}
		cert = got.Status.Certificate
		return len(cert) > 0, nil
	})
	if err != nil {
		if wait.Interrupted(err) {
			err = fmt.Errorf("CertificateSigningRequest %s was approved but not signed within %s: is kube-controller-manager running with its signing CA?", created.Name, r.Timeout)
		}
		return "", fmt.Errorf("node %s: %w", node, err)
	}
	return string(cert), nil
}
