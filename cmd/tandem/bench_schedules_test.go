package main

import (
	"strings"
	"testing"
)

// Bad flags of tandem bench schedules are usage errors (exit 2), caught
// before any cluster starts, with a message naming the flag.
func TestBenchSchedulesFlagsRefused(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--fault", "none,reboot"}, `--fault "reboot"`},
		{[]string{"--schedules", "0"}, "--schedules 0"},
		{[]string{"--schedules", "10001"}, "--schedules 10001"},
		{[]string{"--every", "500ms"}, "--every 500ms"},
		{[]string{"--every", "5s", "--duration", "8s"}, "--duration 8s"},
		{[]string{"--fault", "kill9", "--trials", "5", "--duration", "20s"}, "too short for --trials 5"},
		{[]string{"--trials", "0"}, "--trials 0"},
		{[]string{"--fault", "sigstop", "--servers-n", "2"}, "--servers-n 2"},
		{[]string{"--servers-n", "10"}, "--servers-n 10"},
		{[]string{"--agents", "0"}, "--agents 0"},
		{[]string{"--job-cpu", "0"}, "--job-cpu 0"},
		{[]string{"--lease-ttl", "1500ms"}, "--lease-ttl 1.5s"},
		{[]string{"-o", "yaml"}, `-o "yaml"`},
		{[]string{"-o", "json", "--json", "-"}, "drop --json -"},
		{[]string{"--base-port", "65000"}, "--base-port 65000"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, stderr, code := runCLI(t, append([]string{"bench", "schedules"}, tt.args...)...)
			if code != 2 {
				t.Errorf("got exit code %d, want 2 (stderr %q)", code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("got stderr %q, want it to mention %q", stderr, tt.want)
			}
		})
	}
}
