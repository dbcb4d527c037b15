package main

import (
	"slices"
	"strings"
	"testing"
)

func TestAgentUserFlags(t *testing.T) {
	f := &agentFlags{id: "w1", servers: "http://127.0.0.1:1", listen: "127.0.0.1:0", pollWait: 1, idlePollWait: 1, killGrace: 1,
		runAs: "nobody", allowUsers: " daemon, www-data,, ", allowRoot: true, getenv: func(string) string { return "" }}
	cfg, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RunAs != "nobody" || !slices.Equal(cfg.AllowUsers, []string{"daemon", "www-data"}) || !cfg.AllowRoot {
		t.Errorf("got run-as %q, allow-users %q, allow-root %v; want nobody, [daemon www-data], true", cfg.RunAs, cfg.AllowUsers, cfg.AllowRoot)
	}

	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"invalid run-as", []string{"--run-as", "a b"}, `--run-as: user "a b" contains ' '`},
		{"invalid allowed", []string{"--allow-users", "nobody,1000"}, `--allow-users: user "1000" is a number`},
		{"unknown run-as", []string{"--run-as", "no-such-user-tandem"}, `run attempts as "no-such-user-tandem": no user "no-such-user-tandem" on this machine`},
		{"unknown allowed", []string{"--allow-users", "no-such-user-tandem"}, `allow user "no-such-user-tandem": no user "no-such-user-tandem" on this machine`},
		{"root", []string{"--run-as", "root"}, "this agent does not allow attempts to run as root"},
		{"zero idle poll wait", []string{"--idle-poll-wait", "0s"}, "--idle-poll-wait 0s: must be greater than zero"},
		{"negative idle poll wait", []string{"--idle-poll-wait", "-1s"}, "--idle-poll-wait -1s: must be greater than zero"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"agent", "--id", "w1", "--servers", "http://127.0.0.1:1", "--work-dir", dir}, tt.args...)
			out, errOut, code := runCLI(t, args...)
			if code != 2 || out != "" || !strings.Contains(errOut, tt.want) {
				t.Errorf("got %q, %q, exit %d; want exit 2 and a message containing %q", out, errOut, code, tt.want)
			}
		})
	}
}
