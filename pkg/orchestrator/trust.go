package orchestrator

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// trustPoint is one node's trust point.
type trustPoint struct {
	node string
	api.TrustPoint
}

func (p trustPoint) String() string {
	return fmt.Sprintf("%s:%s (%s %s)", p.node, p.Path, p.Reader, p.Setting)
}

// TrustFindings says where the trust of the nodes CAStatus read disagrees:
// a CA that some trust points of a kubeadm CA (ca, etcd-ca,
// front-proxy-ca) trust and others do not; a certificate, or
// kube-controller-manager's signer, whose CA some trust point of its
// kubeadm CA does not trust; a certificate no CA file of its node signed;
// a trust point that could not be read. None means every trust point of
// each kubeadm CA trusts the same CAs, and everything is signed by one of
// them.
func TrustFindings(nodes []NodeStatus) []string {
	names := map[string]string{}
	groups := map[string][]trustPoint{}
	var findings, unreadable, unknown []string
	for _, n := range nodes {
		for _, a := range n.Authorities {
			names[a.ID] = a.CommonName
		}
		for _, tp := range n.TrustPoints {
			p := trustPoint{n.Node, tp}
			if tp.Error != "" {
				unreadable = append(unreadable, p.String()+": "+tp.Error)
				continue
			}
			groups[tp.CA] = append(groups[tp.CA], p)
		}
	}
	ca := func(id string) string { return fmt.Sprintf("%s (%s)", id, names[id]) }
	// lacking lists the trust points of kubeadm CA group that do not trust id.
	lacking := func(group, id string) []string {
		var out []string
		for _, p := range groups[group] {
			if !slices.Contains(p.CAs, id) {
				out = append(out, p.String())
			}
		}
		return out
	}
	for _, group := range sortedKeys(groups) {
		points := groups[group]
		seen := map[string]bool{}
		for _, p := range points {
			for _, id := range p.CAs {
				if seen[id] {
					continue
				}
				seen[id] = true
				if l := lacking(group, id); len(l) > 0 {
					findings = append(findings, fmt.Sprintf("CA %s is trusted by %d of the %d trust points of %s; not by %s",
						ca(id), len(points)-len(l), len(points), group, listSome(l)))
				}
			}
		}
	}
	signed := map[[2]string][]string{} // kubeadm CA, issuer -> certificates
	for _, n := range nodes {
		for _, s := range n.Signers {
			for _, id := range s.CAs {
				if l := lacking(s.CA, id); len(l) > 0 {
					findings = append(findings, fmt.Sprintf("%s %s on %s signs with CA %s, which %d trust point(s) of %s do not trust: %s",
						s.Reader, s.Setting, n.Node, ca(id), len(l), s.CA, listSome(l)))
				}
			}
		}
		for _, c := range n.Certs {
			switch c.Issuer {
			case "", api.IssuerSelfSigned:
			case api.IssuerUnknown:
				unknown = append(unknown, n.Node+":"+c.Name)
			default:
				if c.CA != "" {
					k := [2]string{c.CA, c.Issuer}
					signed[k] = append(signed[k], n.Node+":"+c.Name)
				}
			}
		}
	}
	keys := make([][2]string, 0, len(signed))
	for k := range signed {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	for _, k := range keys {
		if l := lacking(k[0], k[1]); len(l) > 0 {
			findings = append(findings, fmt.Sprintf("%d certificate(s) of %s are signed by CA %s, which %d trust point(s) of %s do not trust: %s; certificates: %s",
				len(signed[k]), k[0], ca(k[1]), len(l), k[0], listSome(l), listSome(signed[k])))
		}
	}
	if len(unknown) > 0 {
		findings = append(findings, fmt.Sprintf("%d certificate(s) signed by no CA file of their node: %s", len(unknown), listSome(unknown)))
	}
	if len(unreadable) > 0 {
		findings = append(findings, fmt.Sprintf("%d trust point(s) could not be read: %s", len(unreadable), listSome(unreadable)))
	}
	return findings
}

// listSome joins the first few items of a list and counts the rest.
func listSome(items []string) string {
	const some = 5
	if len(items) <= some {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:some], ", "), len(items)-some)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
