package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/kind/pkg/exec"
)

// fakeKindNode is kind's node interface over this machine: commands run
// here, as kind would run them in the node container.
type fakeKindNode struct {
	exec.LocalCmder
	name string
}

func (f fakeKindNode) String() string               { return f.name }
func (f fakeKindNode) Role() (string, error)        { return "worker", nil }
func (f fakeKindNode) IP() (string, string, error)  { return "192.0.2.20", "", nil }
func (f fakeKindNode) SerialLogs(w io.Writer) error { return nil }

// corrupting flips a byte of whatever is uploaded with cat.
type corrupting struct{ Node }

func (c corrupting) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	if stdin != nil {
		data, _ := io.ReadAll(stdin)
		if len(data) > 0 {
			data[len(data)/2] ^= 0xff
		}
		stdin = bytes.NewReader(data)
	}
	return c.Node.Run(ctx, argv, stdin)
}

func TestInstallOverKindsNodeInterface(t *testing.T) {
	InstallDir = t.TempDir()
	n := kindNode{&fakeKindNode{name: "kind-worker"}}
	binary := make([]byte, 3<<20)
	_, _ = rand.Read(binary)
	binary = append([]byte("#!/bin/sh\necho agent\nexit 0\n#"), binary...)
	for i := range binary[30:] {
		if binary[30+i] == '\n' {
			binary[30+i] = ' ' // one comment line: the script runs
		}
	}
	in, err := Install(context.Background(), n, binary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(in.Dir) })
	got, err := os.ReadFile(in.Path)
	if err != nil || !bytes.Equal(got, binary) {
		t.Fatalf("the binary did not arrive intact: %v", err)
	}
	for p, want := range map[string]os.FileMode{in.Dir: 0o700, in.Path: 0o700} {
		if st, _ := os.Stat(p); st.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	if err := in.Remove(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(in.Dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", in.Dir, err)
	}
	if _, err := n.Run(context.Background(), []string{"sh", "-c", "echo oops >&2; exit 3"}, nil); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Errorf("a failing command: %v", err)
	}
}

// A binary that arrives different is never left to run: Install fails and
// removes what it made.
func TestInstallRefusesACorruptedCopy(t *testing.T) {
	InstallDir = t.TempDir()
	n := corrupting{localNode{"here"}}
	_, err := Install(context.Background(), n, []byte("#!/bin/sh\necho agent\n"))
	if err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("got %v", err)
	}
	if left, _ := os.ReadDir(InstallDir); len(left) > 0 {
		t.Errorf("Install left %v", left)
	}
}

// A binary that cannot run where it landed (a noexec mount) is reported as
// such, not as an agent that never answers.
func TestInstallProvesTheBinaryRuns(t *testing.T) {
	InstallDir = t.TempDir()
	_, err := Install(context.Background(), localNode{"here"}, []byte("not a program"))
	if err == nil || !strings.Contains(err.Error(), "cannot run from") {
		t.Fatalf("got %v", err)
	}
}
