package orchestrator

import (
	"context"
	"fmt"
	"math"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// signCSR submits a request that checkCSR accepted, approves it and waits
// for the cluster's signer. The CSR object is deleted afterwards; only the
// public certificate is returned.
func (r *Runner) signCSR(ctx context.Context, node, runID string, c *checkedCSR, validity time.Duration) (string, error) {
	csr := &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "rotate-certs-" + truncate(node, 40) + "-",
			Labels:       map[string]string{LabelApp: AppName, LabelRun: runID},
		},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    c.pem,
			SignerName: c.signer,
			Usages:     c.usages,
		},
	}
	if s, ok := expirationSeconds(validity); ok {
		csr.Spec.ExpirationSeconds = ptr.To(s)
	}
	csrs := r.Client.CertificatesV1().CertificateSigningRequests()
	created, err := csrs.Create(ctx, csr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("node %s: creating the %s CertificateSigningRequest: %w", node, c.name, err)
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
		return "", fmt.Errorf("node %s: approving CertificateSigningRequest %s (needs approve on signer %s): %w", node, created.Name, c.signer, err)
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

// MaxValidity is the longest validity a CertificateSigningRequest can ask
// for: spec.expirationSeconds is an int32.
const MaxValidity = math.MaxInt32 * time.Second

// expirationSeconds is validity as the CSR API takes it; the API refuses
// less than 10 minutes, and more than MaxValidity does not fit.
func expirationSeconds(validity time.Duration) (int32, bool) {
	s := validity / time.Second
	if s < 600 || validity > MaxValidity {
		return 0, false
	}
	return int32(s), true
}
