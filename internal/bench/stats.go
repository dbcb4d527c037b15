// Package bench measures tandem on real local clusters: failover under
// injected faults, submission throughput against raw etcd transactions,
// and scheduling latency. `tandem bench ...` runs it; docs/BENCHMARKS.md
// says what each figure means.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"text/tabwriter"
	"time"
)

// Summary is the distribution of a set of durations, in seconds.
type Summary struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Summarize returns the percentiles of ds (nearest rank). An empty set gives
// a zero Summary with N == 0.
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))].Seconds()
	}
	return Summary{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: s[len(s)-1].Seconds()}
}

// Row formats the summary in milliseconds for a table.
func (s Summary) Row() string {
	if s.N == 0 {
		return "-\t-\t-\t-"
	}
	return fmt.Sprintf("%.1f\t%.1f\t%.1f\t%.1f", s.P50*1000, s.P90*1000, s.P99*1000, s.Max*1000)
}

// WriteJSON writes v as indented JSON to path ("-" for stdout).
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Table prints rows of tab-separated cells aligned.
func Table(w io.Writer, header string, rows ...string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, r)
	}
	tw.Flush()
}

// IntSummary is the distribution of a set of counts (etcd revisions).
type IntSummary struct {
	N   int   `json:"n"`
	P50 int64 `json:"p50"`
	P90 int64 `json:"p90"`
	P99 int64 `json:"p99"`
	Max int64 `json:"max"`
}

// SummarizeInts returns the percentiles of vs (nearest rank, as Summarize).
// An empty set gives a zero IntSummary with N == 0.
func SummarizeInts(vs []int64) IntSummary {
	if len(vs) == 0 {
		return IntSummary{}
	}
	s := append([]int64(nil), vs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(p float64) int64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return IntSummary{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: s[len(s)-1]}
}

// Row formats the summary for a table: p50, p99 and max.
func (s IntSummary) Row() string {
	if s.N == 0 {
		return "-\t-\t-"
	}
	return fmt.Sprintf("%d\t%d\t%d", s.P50, s.P99, s.Max)
}

// Row3 formats p50, p99 and max in milliseconds for a table.
func (s Summary) Row3() string {
	if s.N == 0 {
		return "-\t-\t-"
	}
	return fmt.Sprintf("%.1f\t%.1f\t%.1f", s.P50*1000, s.P99*1000, s.Max*1000)
}
