package main

import (
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

func TestFormatting(t *testing.T) {
	ms := 0.0015
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	exit, zero := 3, 0
	tests := []struct {
		name, got, want string
	}{
		{"plain command", fmtCommand([]string{"ls", "-l", "/tmp/a_b.c"}), "ls -l /tmp/a_b.c"},
		{"spaces quoted", fmtCommand([]string{"echo", "a b"}), "echo 'a b'"},
		{"quote escaped", fmtCommand([]string{"echo", "it's"}), `echo 'it'\''s'`},
		{"empty arg", fmtCommand([]string{"printf", ""}), "printf ''"},
		{"short kept", truncate("abc", 3), "abc"},
		{"long cut", truncate("abcdef", 4), "abc…"},
		{"runes counted", truncate("ééééé", 3), "éé…"},
		{"seconds to ms", fmtSeconds(&ms), "1.5ms"},
		{"nil seconds", fmtSeconds(nil), "-"},
		{"pairs sorted", fmtPairs(map[string]string{"b": "2", "a": "1"}), "a=1 b=2"},
		{"no pairs", fmtPairs(nil), "-"},
		{"ago in ms", fmtAgo(now.Add(-120*time.Millisecond), now), "120ms ago"},
		{"ago in s", fmtAgo(now.Add(-2500*time.Millisecond), now), "2.5s ago"},
		{"ago in min", fmtAgo(now.Add(-184400*time.Millisecond), now), "3m4s ago"},
		{"ago in the future", fmtAgo(now.Add(time.Second), now), "0ms ago"},
		{"never", fmtAgo(time.Time{}, now), "-"},
		{"cpu sum rounded", fmtCPU(0.1 + 0.2), "0.3"},
		{"whole cpus", fmtCPU(4), "4"},
		{"resources", fmtResources(tandem.Resources{CPU: 0.25, MemoryMB: 64}), "cpu 0.25, memory 64 MiB"},
		{"no resources", fmtResources(tandem.Resources{}), "-"},
		{"exit code", fmtExit(tandem.Attempt{ExitCode: &exit}), "3"},
		{"exit 0", fmtExit(tandem.Attempt{ExitCode: &zero}), "0"},
		{"signal wins", fmtExit(tandem.Attempt{ExitCode: &exit, Signal: "SIGKILL"}), "SIGKILL"},
		{"no exit yet", fmtExit(tandem.Attempt{}), "-"},
		{"attempts of max", fmtAttempts(&tandem.Job{JobSpec: tandem.JobSpec{MaxAttempts: 3}, Attempts: make([]tandem.Attempt, 1)}), "1/3"},
		{"attempts, no max", fmtAttempts(&tandem.Job{}), "0"},
		{"duration", fmtDuration(tandem.Duration(90*time.Second), "none"), "1m30s"},
		{"no duration", fmtDuration(0, "none"), "none"},
		{"count", fmtCount(2), "2"},
		{"no count", fmtCount(0), "-"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestOutputFlag(t *testing.T) {
	for _, tt := range []struct {
		in      string
		wantErr bool
	}{{"table", false}, {"json", false}, {"yaml", true}, {"", true}, {"JSON", true}} {
		var o outputFormat
		if err := o.Set(tt.in); (err != nil) != tt.wantErr {
			t.Errorf("Set(%q): got error %v, want error %v", tt.in, err, tt.wantErr)
		}
	}
}
