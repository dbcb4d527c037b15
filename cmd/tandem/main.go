// Command tandem is tandem's single binary: the server, the agent (later), the
// local dev cluster, and the CLI that talks to a cluster through the failover
// client.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// exitError carries a specific exit status out of a command, for commands
// whose status is their answer (check-health, job wait).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks a mistake in the command line; it exits with status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

// run executes the command line and returns the process exit status.
func run(args []string) int {
	root := newRootCmd()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(os.Stderr, "tandem:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "tandem:", err)
	var ue *usageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		return 2
	}
	return 1
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "tandem",
		Short:         "tandem: a job service whose masters are never a single point of failure",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Unknown subcommands must fail, not print help and exit 0.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{msg: err.Error()} })
	g.register(root)
	agent := newAgentCmd()
	agent.AddCommand(newAgentListCmd(g))
	root.AddCommand(
		agent,
		newServerCmd(),
		newDevCmd(),
		newVersionCmd(),
		newEtcdCmd(),
		newBenchCmd(),
		newJobCmd(g),
		newScheduleCmd(g),
		newWorkflowCmd(g),
		newAdminCmd(g),
		newSuperviseCmd(),
		newDemoServiceCmd(),
		newLBCmd(),
		newTLSCmd(),
		newACLCmd(g),
	)
	return root
}

// isCobraUsageError reports whether err came from cobra's own argument checks
// (unknown command, wrong number of arguments).
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires ", "invalid argument"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
