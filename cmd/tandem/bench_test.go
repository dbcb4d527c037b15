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
		{[]string{"bench", "submit", "--secure", "--compare-security"}, "--secure and --compare-security"},
		{[]string{"bench", "submit", "--matrix", "--compare-security"}, "--matrix and --compare-security"},
		{[]string{"bench", "submit", "--secure=maybe"}, "--secure"},
		{[]string{"bench", "submit", "--compare-security", "--jobs", "0"}, "--jobs 0"},
		{[]string{"bench", "submit", "--matrix", "--sched-duration", "0s"}, "--sched-duration 0s"},
		{[]string{"bench", "submit", "--schedule", "--sched-backlog", "0"}, "--sched-backlog 0"},
		{[]string{"bench", "submit", "--sched-backlog", "10001"}, "--sched-backlog 10001"},
		{[]string{"bench", "failover", "--secure", "--compare-security"}, "--secure and --compare-security"},
		{[]string{"bench", "failover", "--compare-security=x"}, "--compare-security"},
		{[]string{"bench", "failover", "--compare-security", "--fault", "reboot"}, `--fault "reboot"`},
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

// --secure and --compare-security are offered, and explained, by both
// benchmarks that measure the cost of security.
func TestBenchSecurityFlagsDocumented(t *testing.T) {
	for _, sub := range []string{"submit", "failover"} {
		t.Run(sub, func(t *testing.T) {
			out, stderr, code := runCLI(t, "bench", sub, "--help")
			if code != 0 {
				t.Fatalf("got exit code %d, want 0 (stderr %q)", code, stderr)
			}
			for _, want := range []string{"--secure ", "--compare-security", "side by side", "docs/SECURITY.md"} {
				if !strings.Contains(out, want) {
					t.Errorf("bench %s --help lacks %q:\n%s", sub, want, out)
				}
			}
		})
	}
}

func TestBenchSecurityFlagsValidate(t *testing.T) {
	tests := []struct {
		secure, compare bool
		ok              bool
	}{
		{false, false, true},
		{true, false, true},
		{false, true, true},
		{true, true, false},
	}
	for _, tt := range tests {
		err := (&securityFlags{secure: tt.secure, compare: tt.compare}).validate()
		if (err == nil) != tt.ok {
			t.Errorf("secure %v, compare %v: got %v, want ok %v", tt.secure, tt.compare, err, tt.ok)
		}
	}
}

// The scheduling run is part of the matrix unless --schedule=false, and of a
// single run only with --schedule.
func TestBenchSubmitSchedRun(t *testing.T) {
	tests := []struct {
		matrix, schedule, changed bool
		want                      bool
	}{
		{matrix: false, want: false},
		{matrix: false, schedule: true, changed: true, want: true},
		{matrix: true, want: true},
		{matrix: true, schedule: true, changed: true, want: true},
		{matrix: true, schedule: false, changed: true, want: false},
	}
	for _, tt := range tests {
		f := &benchSubmitFlags{matrix: tt.matrix, schedule: tt.schedule}
		changed := func(name string) bool { return name == "schedule" && tt.changed }
		if got := f.schedRun(changed); got != tt.want {
			t.Errorf("matrix %v, --schedule %v (given %v): got %v, want %v", tt.matrix, tt.schedule, tt.changed, got, tt.want)
		}
	}
}
