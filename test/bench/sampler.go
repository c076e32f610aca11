//go:build bench

package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/test/bench/report"
	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

// samplerScript runs in a node container (bash -s ROLE STOPFILE MAXSECONDS)
// and prints a line about twice a second until STOPFILE exists: the PIDs of
// the kubelet and (control planes) of each static pod's process, found by
// their command name in one `ps`; the local kube-apiserver's /readyz
// status; every other time the local etcd member's view of the leader and
// the raft term (maintenance status through etcd's gRPC gateway, with the
// healthcheck client certificate); and, while an agent container runs on
// the node, its cgroup's memory.max_usage_in_bytes, which it then resets,
// so that each value is the peak since the previous line, with the
// cgroup's total_rss and total_cache at that moment.
const samplerScript = `set -u
role=$1 stop=$2 max=$3
rm -f "$stop"
end=$((EPOCHSECONDS + max))
pki=/etc/kubernetes/pki/etcd
agent= cg= i=0
while [[ ! -e $stop ]] && ((EPOCHSECONDS < end)); do
	t=$EPOCHREALTIME
	declare -A P=([etcd]=0 [kube-apiserver]=0 [kube-controller]=0 [kube-scheduler]=0 [kubelet]=0)
	while read -r pid comm; do
		case $comm in
		etcd | kube-apiserver | kube-controller | kube-scheduler | kubelet)
			if [[ ${P[$comm]} == 0 ]]; then P[$comm]=$pid; else P[$comm]+=",$pid"; fi ;;
		esac
	done < <(ps -e -o pid=,comm=)
	line="S $t kubelet=${P[kubelet]}"
	if [[ $role == cp ]]; then
		line+=" etcd=${P[etcd]} kube-apiserver=${P[kube-apiserver]} kube-controller-manager=${P[kube-controller]} kube-scheduler=${P[kube-scheduler]}"
		line+=" readyz=$(curl -sk -m 1 -o /dev/null -w '%{http_code}' https://127.0.0.1:6443/readyz)"
		if ((i % 2 == 0)); then
			st=$(curl -s -m 1 --cacert $pki/ca.crt --cert $pki/healthcheck-client.crt --key $pki/healthcheck-client.key \
				-X POST -d '{}' https://127.0.0.1:2379/v3/maintenance/status 2>/dev/null |
				jq -r '"\(.leader // "")/\(.raftTerm // "")"' 2>/dev/null)
			line+=" etcdst=${st:-/}"
		fi
	fi
	if [[ -z $cg ]] && ((i % 2 == 0)); then
		id=$(crictl ps -q --name '^agent$' --namespace kube-system --state running 2>/dev/null | head -n 1)
		if [[ -n $id ]]; then
			cg=$(find /sys/fs/cgroup/memory -type d -name "*$id*" 2>/dev/null | head -n 1)
			agent=${id:0:12}
		fi
	fi
	if [[ -n $cg ]]; then
		if m=$(cat "$cg/memory.max_usage_in_bytes" 2>/dev/null); then
			echo 0 >"$cg/memory.max_usage_in_bytes" 2>/dev/null
			rss=0 cache=0
			while read -r k v; do
				case $k in total_rss) rss=$v ;; total_cache) cache=$v ;; esac
			done <"$cg/memory.stat" 2>/dev/null
			line+=" agent=$agent,$m,$rss,$cache"
		else
			cg= agent=
		fi
	fi
	echo "$line"
	i=$((i + 1))
	sleep 0.4
done
`

const samplerStop = "/run/rc-bench-sampler.stop"

// sampler runs samplerScript on one node until stop.
type sampler struct {
	cluster *framework.Cluster
	node    string
	cp      bool
	done    chan struct{}
	out     []byte
	err     error
}

func startSampler(c *framework.Cluster, node string, cp bool) *sampler {
	s := &sampler{cluster: c, node: node, cp: cp, done: make(chan struct{})}
	role := "worker"
	if cp {
		role = "cp"
	}
	ready := make(chan struct{})
	go func() {
		defer close(s.done)
		// The script removes a stop file left by an earlier run first.
		close(ready)
		s.out, s.err = c.Exec(context.Background(), node, strings.NewReader(samplerScript), "bash", "-s", "--", role, samplerStop, "14400")
	}()
	<-ready
	return s
}

// stop ends the script and waits for its output.
func (s *sampler) stop() {
	if _, err := s.cluster.Exec(context.Background(), s.node, nil, "touch", samplerStop); err != nil {
		s.err = err
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.err = fmt.Errorf("sampler on %s did not stop", s.node)
	}
}

// trace turns the sampler's lines into change points relative to t0.
func (s *sampler) trace(t0 time.Time) (report.NodeTrace, error) {
	tr := report.NodeTrace{Name: s.node, ControlPlane: s.cp, Changes: map[string][]report.Change{}}
	base := float64(t0.UnixNano()) / 1e9
	last := map[string]string{}
	set := func(field string, t float64, v string) {
		if old, ok := last[field]; ok && old == v {
			return
		}
		last[field] = v
		tr.Changes[field] = append(tr.Changes[field], report.Change{T: t, V: v})
	}
	sc := bufio.NewScanner(bytes.NewReader(s.out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "S" {
			continue
		}
		epoch, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		t := epoch - base
		if tr.Samples == 0 {
			tr.First = t
		}
		tr.Last = t
		tr.Samples++
		for _, kv := range f[2:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			switch k {
			case "etcdst":
				leader, term, _ := strings.Cut(v, "/")
				set("etcd-leader", t, leader)
				set("etcd-term", t, term)
			case "agent":
				f := strings.Split(v, ",")
				if len(f) != 4 {
					continue
				}
				var n [3]uint64
				var err error
				for i := range n {
					if n[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
						break
					}
				}
				if err == nil {
					tr.AgentMem = append(tr.AgentMem, report.MemSample{T: t, Container: f[0], Bytes: n[0], RSS: n[1], Cache: n[2]})
				}
			default:
				set(k, t, v)
			}
		}
	}
	if tr.Samples == 0 {
		return tr, fmt.Errorf("sampler on %s recorded nothing (%v): %.200s", s.node, s.err, s.out)
	}
	return tr, s.err
}

// loadAvg samples the host's 1-minute load average every 5 s.
type loadAvg struct {
	mu     sync.Mutex
	points []report.Point
	quit   chan struct{}
	done   chan struct{}
}

func startLoadAvg(t0 time.Time) *loadAvg {
	l := &loadAvg{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			if v, err := readLoadAvg(); err == nil {
				l.mu.Lock()
				l.points = append(l.points, report.Point{T: time.Since(t0).Seconds(), V: v})
				l.mu.Unlock()
			}
			select {
			case <-l.quit:
				return
			case <-time.After(5 * time.Second):
			}
		}
	}()
	return l
}

func (l *loadAvg) stop() []report.Point {
	close(l.quit)
	<-l.done
	return l.points
}
