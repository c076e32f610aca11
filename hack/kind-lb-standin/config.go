package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// The subset of envoy's v3 configuration that kind (>= v0.32) writes for its HA load balancer
// (sigs.k8s.io/kind pkg/cluster/internal/loadbalancer): a bootstrap file naming an LDS and a CDS
// file (path_config_source), TCP-proxy listeners, and STRICT_DNS round-robin clusters with an
// HTTP(S) health check. Files are parsed strictly: a field this stand-in does not implement is an
// error, so a kind release that writes something new fails loudly instead of being half-honoured.

type bootstrap struct {
	Node             map[string]string `json:"node"`
	DynamicResources struct {
		CDSConfig configSource `json:"cds_config"`
		LDSConfig configSource `json:"lds_config"`
	} `json:"dynamic_resources"`
	Admin *struct {
		AccessLogPath string        `json:"access_log_path"`
		Address       socketAddress `json:"address"`
	} `json:"admin"`
}

type configSource struct {
	ResourceAPIVersion string `json:"resource_api_version"`
	PathConfigSource   *struct {
		Path string `json:"path"`
	} `json:"path_config_source"`
	Path string `json:"path"` // the deprecated form of path_config_source
}

func (c configSource) path() string {
	if c.PathConfigSource != nil {
		return c.PathConfigSource.Path
	}
	return c.Path
}

type socketAddress struct {
	SocketAddress struct {
		Address   string `json:"address"`
		PortValue int    `json:"port_value"`
	} `json:"socket_address"`
}

func (a socketAddress) hostPort() string {
	return joinHostPort(a.SocketAddress.Address, a.SocketAddress.PortValue)
}

func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}

type resources[T any] struct {
	Resources []T `json:"resources"`
}

const (
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	tcpProxyType = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	tlsType      = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)

type listenerConfig struct {
	Type         string        `json:"@type"`
	Name         string        `json:"name"`
	Address      socketAddress `json:"address"`
	FilterChains []struct {
		Filters []struct {
			Name        string `json:"name"`
			TypedConfig struct {
				Type       string `json:"@type"`
				StatPrefix string `json:"stat_prefix"`
				Cluster    string `json:"cluster"`
			} `json:"typed_config"`
		} `json:"filters"`
	} `json:"filter_chains"`
}

type transportSocket struct {
	Name        string `json:"name"`
	TypedConfig struct {
		Type             string `json:"@type"`
		CommonTLSContext struct {
			ValidationContext struct {
				TrustChainVerification string `json:"trust_chain_verification"`
			} `json:"validation_context"`
		} `json:"common_tls_context"`
	} `json:"typed_config"`
}

type clusterConfig struct {
	Type            string   `json:"@type"`
	Name            string   `json:"name"`
	ConnectTimeout  duration `json:"connect_timeout"`
	DiscoveryType   string   `json:"type"`
	LBPolicy        string   `json:"lb_policy"`
	DNSLookupFamily string   `json:"dns_lookup_family"`
	DNSRefreshRate  duration `json:"dns_refresh_rate"`
	HealthChecks    []struct {
		Timeout                      duration          `json:"timeout"`
		Interval                     duration          `json:"interval"`
		UnhealthyThreshold           int               `json:"unhealthy_threshold"`
		HealthyThreshold             int               `json:"healthy_threshold"`
		InitialJitter                duration          `json:"initial_jitter"`
		NoTrafficInterval            duration          `json:"no_traffic_interval"`
		AlwaysLogHealthCheckFailures bool              `json:"always_log_health_check_failures"`
		AlwaysLogHealthCheckSuccess  bool              `json:"always_log_health_check_success"`
		EventLogPath                 string            `json:"event_log_path"`
		TransportSocketMatchCriteria map[string]string `json:"transport_socket_match_criteria"`
		HTTPHealthCheck              *struct {
			Path string `json:"path"`
			Host string `json:"host"`
		} `json:"http_health_check"`
		TCPHealthCheck *struct{} `json:"tcp_health_check"`
	} `json:"health_checks"`
	TransportSocketMatches []struct {
		Name            string            `json:"name"`
		Match           map[string]string `json:"match"`
		TransportSocket transportSocket   `json:"transport_socket"`
	} `json:"transport_socket_matches"`
	LoadAssignment struct {
		ClusterName string `json:"cluster_name"`
		Endpoints   []struct {
			LBEndpoints []struct {
				Endpoint struct {
					Address socketAddress `json:"address"`
				} `json:"endpoint"`
			} `json:"lb_endpoints"`
		} `json:"endpoints"`
	} `json:"load_assignment"`
}

// duration is a protobuf Duration in its JSON form ("0.25s").
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	s, err := strconv.Unquote(string(b))
	if err != nil {
		return fmt.Errorf("duration %s: want a string such as \"0.25s\"", b)
	}
	if !strings.HasSuffix(s, "s") {
		return fmt.Errorf("duration %q: protobuf durations end in s", s)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func (d duration) or(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// listener is a validated listener: where to listen and which cluster gets the connections.
type listener struct {
	name, address, cluster string
}

// healthCheck is a validated active health check.
type healthCheck struct {
	timeout, interval              time.Duration
	unhealthyThreshold, healthyMin int
	httpPath, httpHost             string // empty path: TCP connect check
	tls                            bool   // over TLS, chain not verified (ACCEPT_UNTRUSTED)
}

// cluster is a validated cluster.
type cluster struct {
	name           string
	connectTimeout time.Duration
	dns            bool // STRICT_DNS: endpoint hostnames are resolved, every address is a host
	dnsRefresh     time.Duration
	preferIPv4     bool
	endpoints      []string // host:port as configured
	health         *healthCheck
}

func readResources[T any](path string) ([]T, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r resources[T]
	if err := yaml.UnmarshalStrict(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r.Resources, nil
}

func parseBootstrap(path string) (cds, lds string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", "", err
	}
	var b bootstrap
	if err := yaml.UnmarshalStrict(data, &b); err != nil {
		return "", "", fmt.Errorf("%s: %w", path, err)
	}
	cds, lds = b.DynamicResources.CDSConfig.path(), b.DynamicResources.LDSConfig.path()
	if cds == "" || lds == "" {
		return "", "", fmt.Errorf("%s: dynamic_resources needs a path for both cds_config and lds_config", path)
	}
	return cds, lds, nil
}

func parseListeners(path string) ([]listener, error) {
	raw, err := readResources[listenerConfig](path)
	if err != nil {
		return nil, err
	}
	var out []listener
	for _, l := range raw {
		if l.Type != listenerType {
			return nil, fmt.Errorf("%s: resource type %q, want %s", path, l.Type, listenerType)
		}
		if len(l.FilterChains) != 1 || len(l.FilterChains[0].Filters) != 1 {
			return nil, fmt.Errorf("%s: listener %q: only one filter chain with one tcp_proxy filter is implemented", path, l.Name)
		}
		f := l.FilterChains[0].Filters[0]
		if f.TypedConfig.Type != tcpProxyType || f.TypedConfig.Cluster == "" {
			return nil, fmt.Errorf("%s: listener %q: filter %q is not a tcp_proxy to a cluster", path, l.Name, f.Name)
		}
		if l.Address.SocketAddress.PortValue <= 0 {
			return nil, fmt.Errorf("%s: listener %q has no port", path, l.Name)
		}
		out = append(out, listener{name: l.Name, address: l.Address.hostPort(), cluster: f.TypedConfig.Cluster})
	}
	return out, nil
}

func parseClusters(path string) ([]cluster, error) {
	raw, err := readResources[clusterConfig](path)
	if err != nil {
		return nil, err
	}
	var out []cluster
	for _, c := range raw {
		cl, err := validateCluster(c)
		if err != nil {
			return nil, fmt.Errorf("%s: cluster %q: %w", path, c.Name, err)
		}
		out = append(out, cl)
	}
	return out, nil
}

func validateCluster(c clusterConfig) (cluster, error) {
	cl := cluster{
		name:           c.Name,
		connectTimeout: c.ConnectTimeout.or(5 * time.Second), // envoy's default
		dnsRefresh:     c.DNSRefreshRate.or(5 * time.Second), // envoy's default
		preferIPv4:     c.DNSLookupFamily == "V4_PREFERRED" || c.DNSLookupFamily == "V4_ONLY",
	}
	if c.Type != clusterType {
		return cl, fmt.Errorf("resource type %q, want %s", c.Type, clusterType)
	}
	switch c.DiscoveryType {
	case "STRICT_DNS", "LOGICAL_DNS":
		cl.dns = true
	case "STATIC", "":
	default:
		return cl, fmt.Errorf("discovery type %q is not implemented", c.DiscoveryType)
	}
	if c.LBPolicy != "" && c.LBPolicy != "ROUND_ROBIN" {
		return cl, fmt.Errorf("lb_policy %q is not implemented (ROUND_ROBIN is)", c.LBPolicy)
	}
	switch c.DNSLookupFamily {
	case "", "AUTO", "V4_PREFERRED", "V4_ONLY", "V6_ONLY", "ALL":
	default:
		return cl, fmt.Errorf("dns_lookup_family %q is not implemented", c.DNSLookupFamily)
	}
	if c.LoadAssignment.ClusterName != "" && c.LoadAssignment.ClusterName != c.Name {
		return cl, fmt.Errorf("load_assignment names cluster %q", c.LoadAssignment.ClusterName)
	}
	for _, le := range c.LoadAssignment.Endpoints {
		for _, e := range le.LBEndpoints {
			a := e.Endpoint.Address.SocketAddress
			if a.Address == "" || a.PortValue <= 0 {
				return cl, errors.New("an endpoint without address or port")
			}
			cl.endpoints = append(cl.endpoints, joinHostPort(a.Address, a.PortValue))
		}
	}
	switch len(c.HealthChecks) {
	case 0:
	case 1:
		h := c.HealthChecks[0]
		hc := &healthCheck{
			timeout:            h.Timeout.or(time.Second),
			interval:           h.Interval.or(time.Second),
			unhealthyThreshold: max(h.UnhealthyThreshold, 1),
			healthyMin:         max(h.HealthyThreshold, 1),
		}
		switch {
		case h.HTTPHealthCheck != nil && h.TCPHealthCheck == nil:
			hc.httpPath, hc.httpHost = h.HTTPHealthCheck.Path, h.HTTPHealthCheck.Host
			if hc.httpPath == "" {
				return cl, errors.New("http_health_check without a path")
			}
			if hc.httpHost == "" {
				hc.httpHost = c.Name // envoy sends the cluster name as Host by default
			}
		case h.TCPHealthCheck != nil && h.HTTPHealthCheck == nil:
		default:
			return cl, errors.New("a health check must be exactly one of http_health_check and tcp_health_check")
		}
		if len(h.TransportSocketMatchCriteria) > 0 {
			var match *transportSocket
			for i, m := range c.TransportSocketMatches {
				if mapsEqual(m.Match, h.TransportSocketMatchCriteria) {
					match = &c.TransportSocketMatches[i].TransportSocket
					break
				}
			}
			if match == nil {
				return cl, fmt.Errorf("no transport_socket_matches entry matches the health check's criteria %v", h.TransportSocketMatchCriteria)
			}
			if match.TypedConfig.Type != tlsType {
				return cl, fmt.Errorf("transport socket %q is not an UpstreamTlsContext", match.Name)
			}
			if v := match.TypedConfig.CommonTLSContext.ValidationContext.TrustChainVerification; v != "ACCEPT_UNTRUSTED" {
				return cl, fmt.Errorf("trust_chain_verification %q is not implemented (ACCEPT_UNTRUSTED is)", v)
			}
			hc.tls = true
		}
		cl.health = hc
	default:
		return cl, errors.New("more than one health check is not implemented")
	}
	return cl, nil
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
