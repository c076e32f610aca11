package ssh

import (
	"fmt"
	"os/user"
	"strings"
	"testing"
)

// TestParseTarget parses [user@]host[:port], IPv6 included, and refuses
// what is not one.
func TestParseTarget(t *testing.T) {
	for in, want := range map[string]target{
		"node1":                 {host: "node1", port: "22"},
		"root@node1":            {user: "root", host: "node1", port: "22"},
		"node1:2222":            {host: "node1", port: "2222"},
		"deploy@10.0.0.5:22":    {user: "deploy", host: "10.0.0.5", port: "22"},
		"::1":                   {host: "::1", port: "22"},
		"[fe80::1]":             {host: "fe80::1", port: "22"},
		"me@[2001:db8::7]:2200": {user: "me", host: "2001:db8::7", port: "2200"},
	} {
		got, err := parseTarget(in)
		if err != nil || got != want {
			t.Errorf("parseTarget(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "@node", "root@", "node:", "node:0", "node:65536", "node:ssh",
		"-oProxyCommand=x", "a b", "a/b", "[::1", "[::1]x", "a:b:c:d", "user name@node", "[]:22"} {
		if got, err := parseTarget(in); err == nil {
			t.Errorf("parseTarget(%q) = %+v, want an error", in, got)
		} else if !strings.Contains(err.Error(), "[user@]host[:port]") {
			t.Errorf("parseTarget(%q): %v; want the error to show the form", in, err)
		}
	}
}

// TestParseTargets splits, trims, validates and de-duplicates --ssh.
func TestParseTargets(t *testing.T) {
	for in, want := range map[string][]string{
		"a":                          {"a"},
		" a , root@b,c:2222, ":       {"a", "root@b", "c:2222"},
		"a,a:22,A,b,a:2222":          {"a", "b", "a:2222"},
		"root@a,root@a:22,[::1],::1": {"root@a", "[::1]"},
		"x@h1, x@h1 ,h2,,h3":         {"x@h1", "h2", "h3"},
	} {
		got, err := ParseTargets(in)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("ParseTargets(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"":             "no SSH targets",
		" , ,":         "no SSH targets",
		"a,b c":        `"b c"`,
		"a,root@a":     "listed twice with different users",
		"a,bad:port:x": `"bad:port:x"`,
	} {
		if _, err := ParseTargets(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseTargets(%q): %v; want an error with %q", in, err, msg)
		}
	}
}

// TestUserFor: the target's user wins over Options.User, which wins over
// the current OS user.
func TestUserFor(t *testing.T) {
	me := userFor(target{}, Options{})
	if u, err := user.Current(); err == nil && me != u.Username {
		t.Errorf("default user %q, want the current user %q", me, u.Username)
	}
	if got := userFor(target{user: "a"}, Options{User: "b"}); got != "a" {
		t.Errorf("got %q, want the target's user", got)
	}
	if got := userFor(target{}, Options{User: "b"}); got != "b" {
		t.Errorf("got %q, want Options.User", got)
	}
}
