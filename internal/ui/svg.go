package ui

import (
	"fmt"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
)

// svgTimeline is the HA page's drawing: every failover on a time axis, and
// below it one row per failover with its phases drawn to scale.
type svgTimeline struct {
	Width, Height int
	X0, X1        int
	From, To      string
	Desc          string
	Marks         []svgMark
	Rows          []svgRow
}

type svgMark struct {
	X     float64
	Cause string
	Label string
}

type svgRow struct {
	Label string
	TextY int
	EndX  float64
	Text  string
	Bars  []svgBar
}

type svgBar struct {
	X, Y, W float64
	Phase   string
	Text    string
}

// Geometry of the drawing, in SVG user units.
const (
	svgWidth   = 900
	svgLeft    = 170
	svgRight   = 740
	svgRowH    = 22
	svgTop     = 56
	svgMaxRows = 30
)

// drawTimeline lays out events (oldest first); it draws the last svgMaxRows
// failovers' phases.
func drawTimeline(evs []tandem.FailoverEvent, now time.Time) svgTimeline {
	t := svgTimeline{Width: svgWidth, X0: svgLeft, X1: svgRight}
	rows := evs
	if len(rows) > svgMaxRows {
		rows = rows[len(rows)-svgMaxRows:]
	}
	t.Height = svgTop + svgRowH*len(rows) + 10
	if len(evs) == 0 {
		t.Desc = "No failover has been recorded."
		t.From, t.To = "", now.UTC().Format("15:04:05")
		return t
	}
	start, end := evs[0].Time, now
	if !end.After(start) {
		end = start.Add(time.Second)
	}
	span := end.Sub(start).Seconds()
	t.From, t.To = start.UTC().Format("2006-01-02 15:04:05"), end.UTC().Format("2006-01-02 15:04:05 UTC")
	for _, e := range evs {
		x := float64(svgLeft) + float64(svgRight-svgLeft)*e.Time.Sub(start).Seconds()/span
		t.Marks = append(t.Marks, svgMark{X: x, Cause: e.Cause, Label: fmt.Sprintf("%s: %s became owner of shard %d (epoch %d), cause %s",
			e.Time.UTC().Format("15:04:05"), e.ActiveID, e.Shard, e.Epoch, e.Cause)})
	}
	// Phases: scaled to the longest failover drawn.
	longest := 0.0
	for _, e := range rows {
		longest = max(longest, val(e.DetectionS)+val(e.ElectionS)+val(e.TransitionS))
	}
	if longest == 0 {
		longest = 1
	}
	scale := float64(svgRight-svgLeft) / longest
	var desc []string
	for i, e := range rows {
		y := svgTop + svgRowH*i
		r := svgRow{Label: fmt.Sprintf("epoch %d → %s", e.Epoch, e.ActiveID), TextY: y + 11}
		x := float64(svgLeft)
		for _, ph := range []struct {
			name string
			v    *float64
		}{{"detection", e.DetectionS}, {"election", e.ElectionS}, {"transition", e.TransitionS}} {
			if ph.v == nil {
				continue
			}
			w := *ph.v * scale
			r.Bars = append(r.Bars, svgBar{X: x, Y: float64(y), W: max(w, 1), Phase: ph.name, Text: fmt.Sprintf("%.3f s", *ph.v)})
			x += w
		}
		r.EndX = x + 6
		total := val(e.DetectionS) + val(e.ElectionS) + val(e.TransitionS)
		r.Text = fmt.Sprintf("%s, %.3f s", e.Cause, total)
		if e.DetectionS == nil && e.ElectionS == nil && e.TransitionS == nil {
			r.Text = e.Cause + ", durations unknown"
		}
		desc = append(desc, fmt.Sprintf("epoch %d, %s, %s", e.Epoch, e.ActiveID, r.Text))
		t.Rows = append(t.Rows, r)
	}
	t.Desc = fmt.Sprintf("%d failovers from %s to %s: %s.", len(evs), t.From, t.To, strings.Join(desc, "; "))
	return t
}

func val(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}
