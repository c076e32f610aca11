package orchestrator

import (
	"context"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// streamErrorLevel is the verbosity at which client-go's errors about an
// exec stream are shown. A stream breaks whenever an action restarts
// kube-apiserver or the kubelet that carry it; call then fetches the
// result the agent filed, so these errors ("Copying stderr failed",
// "Websocket Ping failed", logged by client-go as unhandled) are expected
// and would only alarm people at the default verbosity.
const streamErrorLevel = 2

// quietStreams returns ctx with a logger for client-go's exec streams that
// logs their errors as information at streamErrorLevel.
func quietStreams(ctx context.Context) context.Context {
	inner := klog.FromContext(ctx)
	if inner.GetSink() == nil {
		return ctx
	}
	return klog.NewContext(ctx, logr.New(demoteErrors{inner.GetSink()}))
}

// demoteErrors is a sink that turns errors into information at
// streamErrorLevel.
type demoteErrors struct{ logr.LogSink }

func (d demoteErrors) Error(err error, msg string, kv ...any) {
	if d.Enabled(streamErrorLevel) {
		d.Info(streamErrorLevel, msg, append(kv, "err", err)...)
	}
}

func (d demoteErrors) WithValues(kv ...any) logr.LogSink {
	return demoteErrors{d.LogSink.WithValues(kv...)}
}

func (d demoteErrors) WithName(name string) logr.LogSink {
	return demoteErrors{d.LogSink.WithName(name)}
}
