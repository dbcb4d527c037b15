package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
)

// newAgentListCmd returns `list`, which the agent command carries:
// `tandem agent list`.
func newAgentListCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the agents the active server knows, with their capacity and use",
		Long: `List the agents the active server knows, sorted by ID: their state (ready, or
lost once silent too long), the CPU cores and MiB of memory in use out of
their capacity, how many attempts they run, and how long ago the active last
heard from them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sorted := func(c *client.Client, ctx context.Context) ([]tandem.AgentStatus, error) {
				agents, err := c.Agents(ctx)
				slices.SortFunc(agents, func(a, b tandem.AgentStatus) int { return cmp.Compare(a.ID, b.ID) })
				return agents, err
			}
			return show(g, cmd, format, sorted, func(w io.Writer, agents []tandem.AgentStatus) error {
				now := time.Now()
				t := newTable(w, "ID", "URL", "STATE", "CPU", "MEMORY(MiB)", "RUNNING", "LAST-CONTACT")
				for _, a := range agents {
					t.row(a.ID, orDash(a.URL), orDash(a.State),
						fmtCPU(a.Used.CPU)+"/"+fmtCPU(a.Capacity.CPU),
						fmt.Sprintf("%d/%d", a.Used.MemoryMB, a.Capacity.MemoryMB),
						strconv.Itoa(len(a.Running)), fmtAgo(a.LastContact, now))
				}
				return t.flush()
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}
