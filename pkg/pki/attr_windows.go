package pki

import (
	"io/fs"
	"os"
)

// The agent runs on Linux nodes; on Windows the plugin only needs to build.

func attrOf(st fs.FileInfo) Attr { return Attr{Mode: st.Mode().Perm()} }

func chown(*os.File, Attr) error { return nil }

func writable(string) error { return nil }
