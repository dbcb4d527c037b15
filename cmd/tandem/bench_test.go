package main

import (
	"strings"
	"testing"
)

// Bad bench flags are usage errors (exit 2) caught before any cluster
// starts, with a message naming the flag.
func TestBenchFlagsRefused(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"bench", "shards", "--servers-n", "1"}, "--servers-n 1"},
		{[]string{"bench", "shards", "--shards", "1"}, "--shards 1"},
		{[]string{"bench", "shards", "--cause", "crash,flood"}, `--cause "flood"`},
		{[]string{"bench", "shards", "--trials", "0"}, "--trials 0"},
		{[]string{"bench", "shards", "--lease-ttl", "1500ms"}, "--lease-ttl 1.5s"},
		{[]string{"bench", "shards", "--every", "0s"}, "--every 0s"},
		{[]string{"bench", "submit", "--shards", "0"}, "--shards 0"},
		{[]string{"bench", "submit", "--etcd", "remote"}, `--etcd "remote"`},
		{[]string{"bench", "submit", "--etcd-members", "10"}, "--etcd-members 10"},
		{[]string{"bench", "submit", "--matrix", "--shards", "1"}, "at least 2 shards"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, stderr, code := runCLI(t, tt.args...)
			if code != 2 {
				t.Errorf("got exit code %d, want 2 (stderr %q)", code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("got stderr %q, want it to mention %q", stderr, tt.want)
			}
		})
	}
}
