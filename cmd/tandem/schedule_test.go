package main

import (
	"strings"
	"testing"
)

// Bad input to tandem schedule: exit 2 with the reason, nothing sent (the
// fake cluster records no request; the real ones are e2e/schedule_test.go).
func TestScheduleUsageErrors(t *testing.T) {
	f := newFakeCluster(t)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no timing", []string{"schedule", "create", "--", "true"}, "give --cron EXPR or --every DURATION"},
		{"no command", []string{"schedule", "create", "--every", "1s"}, "no command given"},
		{"malformed cron", []string{"schedule", "create", "--cron", "61 * * * *", "--", "true"}, `cron "61 * * * *" is malformed`},
		{"never fires", []string{"schedule", "create", "--cron", "0 0 30 2 *", "--", "true"}, "never fires"},
		{"unknown zone", []string{"schedule", "create", "--cron", "0 2 * * *", "--tz", "Nowhere/City", "--", "true"}, "unknown time zone"},
		{"both cron and every", []string{"schedule", "create", "--cron", "* * * * *", "--every", "1s", "--", "true"}, "schedule create: invalid schedule"},
		{"zero every", []string{"schedule", "create", "--every", "0s", "--", "true"}, "--every is 0s"},
		{"bad overlap", []string{"schedule", "create", "--every", "1s", "--overlap", "sometimes", "--", "true"}, "sometimes"},
		{"bad start", []string{"schedule", "create", "--every", "1s", "--start", "tomorrow", "--", "true"}, `--start "tomorrow"`},
		{"note without pause", []string{"schedule", "create", "--every", "1s", "--pause-note", "x", "--", "true"}, "--pause-note goes with --paused"},
		{"negative jitter", []string{"schedule", "create", "--every", "1s", "--jitter", "-1s", "--", "true"}, "must not be negative"},
		{"bad job", []string{"schedule", "create", "--every", "1s", "--cpu", "0", "--", "true"}, "--cpu is 0"},
		{"get without ID", []string{"schedule", "get"}, "accepts 1 arg"},
		{"runs bad outcome", []string{"schedule", "runs", "s1", "--outcome", "maybe"}, `--outcome "maybe"`},
		{"next zero", []string{"schedule", "next", "s1", "-n", "0"}, "-n must be at least 1"},
		{"backfill without range", []string{"schedule", "backfill", "s1"}, "give --from and --to"},
		{"backfill backwards", []string{"schedule", "backfill", "s1", "--from", "2030-01-02T00:00:00Z", "--to", "2030-01-01T00:00:00Z"}, "is before --from"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"--servers", f.servers()}, tt.args...)...)
			if code != 2 || !strings.Contains(errOut, tt.want) || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and %q", code, out, errOut, tt.want)
			}
		})
	}
}
