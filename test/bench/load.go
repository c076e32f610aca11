//go:build bench

package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http/httptrace"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/rotate-certs/kubectl-rotate-certs/test/bench/report"
)

const (
	loadRate      = 20
	loadTimeout   = 10 * time.Second
	loadNamespace = "rc-bench"
	loadConfigMap = "load"
)

// loadClient sends loadRate requests a second, alternately a GET of a
// ConfigMap and a merge PATCH of one of its keys, each in its own goroutine
// with loadTimeout and no client-side retry, through one client-go
// clientset (HTTP/2, as kubectl and controllers talk to the API), and
// records every outcome, with the kube-apiserver that served it (by the
// serial of the certificate its connection was handed) and the connection.
type loadClient struct {
	t0      time.Time
	client  atomic.Pointer[kubernetes.Clientset]
	mu      sync.Mutex
	reqs    []report.Request
	serials []string // by Request.Server
	quit    chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
}

func loadConfig(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 1000, 1000 // never throttled on the client side
	cfg.UserAgent = "rc-bench-load"
	return cfg
}

func newLoadClient(ctx context.Context, cfg *rest.Config, t0 time.Time) (*loadClient, error) {
	l := &loadClient{t0: t0, quit: make(chan struct{}), done: make(chan struct{})}
	if err := l.use(cfg); err != nil {
		return nil, err
	}
	c := l.client.Load()
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: loadNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	_, err = c.CoreV1().ConfigMaps(loadNamespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: loadConfigMap},
		Data:       map[string]string{"seq": "0"},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	return l, nil
}

// use switches the client to another kubeconfig's credentials.
func (l *loadClient) use(cfg *rest.Config) error {
	c, err := kubernetes.NewForConfig(loadConfig(cfg))
	if err != nil {
		return err
	}
	l.client.Store(c)
	return nil
}

func (l *loadClient) start() {
	go func() {
		defer close(l.done)
		tick := time.NewTicker(time.Second / loadRate)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-l.quit:
				l.wg.Wait()
				return
			case <-tick.C:
			}
			l.wg.Add(1)
			go func(i int) {
				defer l.wg.Done()
				l.one(i)
			}(i)
		}
	}()
}

func (l *loadClient) one(i int) {
	write := i%2 == 1
	rc := l.client.Load().CoreV1().RESTClient()
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	defer cancel()
	var connMu sync.Mutex
	serial, port := "", 0
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		connMu.Lock()
		defer connMu.Unlock()
		if a, ok := info.Conn.LocalAddr().(*net.TCPAddr); ok {
			port = a.Port
		}
		if tc, ok := info.Conn.(*tls.Conn); ok {
			if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 {
				serial = st.PeerCertificates[0].SerialNumber.String()
			}
		}
	}})
	start := time.Now()
	var res rest.Result
	if write {
		res = rc.Patch(types.MergePatchType).Namespace(loadNamespace).Resource("configmaps").Name(loadConfigMap).
			Body([]byte(fmt.Sprintf(`{"data":{"seq":"%d"}}`, i))).MaxRetries(0).Do(ctx)
	} else {
		res = rc.Get().Namespace(loadNamespace).Resource("configmaps").Name(loadConfigMap).MaxRetries(0).Do(ctx)
	}
	lat := time.Since(start)
	var code int
	res.StatusCode(&code)
	r := report.Request{Start: start.Sub(l.t0).Seconds(), Latency: lat.Seconds(), Write: write, Code: code, Server: -1}
	if err := res.Error(); err != nil {
		r.Err = err.Error()
	} else if code < 200 || code > 299 {
		r.Err = fmt.Sprintf("HTTP %d", code)
	}
	connMu.Lock()
	r.Conn = port
	connMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if serial != "" {
		r.Server = slices.Index(l.serials, serial)
		if r.Server < 0 {
			r.Server = len(l.serials)
			l.serials = append(l.serials, serial)
		}
	}
	l.reqs = append(l.reqs, r)
}

// stop waits for the requests in flight and returns them all, by start,
// and the serials of the servers they name.
func (l *loadClient) stop() ([]report.Request, []string) {
	close(l.quit)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	sort.Slice(l.reqs, func(i, j int) bool { return l.reqs[i].Start < l.reqs[j].Start })
	return l.reqs, l.serials
}

// since returns the requests started after t (seconds since t0), so far.
func (l *loadClient) since(t float64) (total, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.reqs {
		if r.Start >= t {
			total++
			if !r.OK() {
				failed++
			}
		}
	}
	return total, failed
}
