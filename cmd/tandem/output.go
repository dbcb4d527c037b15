package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
)

// outputFormat is the value of the -o flag. Setting it to anything but
// table or json fails flag parsing, which the root turns into a usage error.
type outputFormat string

const (
	outputTable outputFormat = "table"
	outputJSON  outputFormat = "json"
)

func (o *outputFormat) String() string { return string(*o) }
func (o *outputFormat) Type() string   { return "format" }

func (o *outputFormat) Set(s string) error {
	switch f := outputFormat(s); f {
	case outputTable, outputJSON:
		*o = f
		return nil
	}
	return fmt.Errorf("unknown output format %q: want table or json", s)
}

// addOutputFlag adds -o/--output to cmd and returns its value.
func addOutputFlag(cmd *cobra.Command) *outputFormat {
	o := outputTable
	cmd.Flags().VarP(&o, "output", "o", "output format: table or json")
	return &o
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints aligned columns; call flush when done.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		// A tab or newline inside a cell would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// fmtTime prints a time in local time to the second, or "-" when unknown.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// fmtSeconds prints a duration given in seconds as milliseconds, or "-".
func fmtSeconds(s *float64) string {
	if s == nil {
		return "-"
	}
	return strconv.FormatFloat(*s*1000, 'f', 1, 64) + "ms"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// fmtCommand prints argv the way a shell would read it back.
func fmtCommand(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// truncate shortens s to at most n runes, marking the cut.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// fmtPairs prints a map as sorted k=v pairs, or "-" when empty.
func fmtPairs(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, " ")
}

// fmtTimePtr is fmtTime for an optional time.
func fmtTimePtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return fmtTime(*t)
}

// fmtAgo prints how long before now t was, to the millisecond under a
// second and to the second above a minute ("120ms ago", "2.5s ago",
// "3m4s ago"), or "-" when t is unknown.
func fmtAgo(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms ago"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s ago"
	}
	return d.Round(time.Second).String() + " ago"
}

// fmtDuration prints a job's duration setting, or zero when it is 0.
func fmtDuration(d tandem.Duration, zero string) string {
	if d == 0 {
		return zero
	}
	return d.Std().String()
}

// fmtCount prints a positive count, or "-" when unset.
func fmtCount(n int) string {
	if n <= 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

// fmtCPU prints CPU cores to two decimals at most: 0.1, 2, 1.25.
func fmtCPU(cores float64) string {
	return strconv.FormatFloat(math.Round(cores*100)/100, 'f', -1, 64)
}

// fmtResources prints what an attempt needs: "cpu 0.5, memory 64 MiB".
func fmtResources(r tandem.Resources) string {
	if r == (tandem.Resources{}) {
		return "-"
	}
	return fmt.Sprintf("cpu %s, memory %d MiB", fmtCPU(r.CPU), r.MemoryMB)
}

// fmtAttempts prints a job's attempts so far, out of its maximum: "1/3".
func fmtAttempts(j *tandem.Job) string {
	n := strconv.Itoa(len(j.Attempts))
	if j.MaxAttempts > 0 {
		n += "/" + strconv.Itoa(j.MaxAttempts)
	}
	return n
}

// fmtExit prints how an attempt's process ended: the signal that killed it,
// else its exit code, else "-".
func fmtExit(a tandem.Attempt) string {
	switch {
	case a.Signal != "":
		return a.Signal
	case a.ExitCode != nil:
		return strconv.Itoa(*a.ExitCode)
	}
	return "-"
}

// show runs a read command's common steps: fetch with the command's client
// (failover, --timeout; a method expression such as (*client.Client).Servers
// fits fetch), then print the result as JSON with -o json, or
// for people with human.
func show[T any](g *globals, cmd *cobra.Command, format *outputFormat,
	fetch func(*client.Client, context.Context) (T, error), human func(io.Writer, T) error) error {
	ctx, cancel, c, err := g.setup(cmd)
	if err != nil {
		return err
	}
	defer cancel()
	v, err := fetch(c, ctx)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if *format == outputJSON {
		return writeJSON(w, v)
	}
	return human(w, v)
}
