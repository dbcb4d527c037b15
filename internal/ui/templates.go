package ui

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
)

// funcs are the helpers templates use. Times are shown in UTC, as text.
var funcs = template.FuncMap{
	"clock": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	"timeAgo": timeAgo,
	"secs": func(s *float64) string {
		if s == nil {
			return "unknown"
		}
		return strconv.FormatFloat(*s, 'f', 3, 64) + " s"
	},
	"labels": func(m map[string]string) string {
		var parts []string
		for k, v := range m {
			parts = append(parts, k+"="+v)
		}
		slices.Sort(parts)
		return strings.Join(parts, ", ")
	},
	"argv": func(a []string) string {
		q := make([]string, len(a))
		for i, s := range a {
			if s == "" || strings.ContainsAny(s, " \t\n'\"\\$`") {
				s = strconv.Quote(s)
			}
			q[i] = s
		}
		return strings.Join(q, " ")
	},
	"exit":    exitText,
	"actions": func(j *tandem.Job, s *session) actionsData { return actionsData{Job: j, Session: s} },
	"serverRow": func(s tandem.ServerInfo, d clusterData) serverRow {
		return serverRow{S: s, D: d}
	},
	"agentRow": func(a tandem.AgentStatus, now time.Time) agentRow { return agentRow{A: a, Now: now} },
	"float":    func(n int64) float64 { return float64(n) },
	"timing":   func(s *tandem.Schedule) string { return timing(&s.ScheduleSpec) },
	"dur": func(d tandem.Duration) string {
		if d == 0 {
			return "0s"
		}
		return d.Std().Round(time.Millisecond).String()
	},
	"join":   strings.Join,
	"steps":  stepCounts,
	"add":    func(a, b int) int { return a + b },
	"string": func(v any) string { return fmt.Sprint(v) },
	"usage": func(used, capacity float64, unit string) usage {
		return usage{Value: used, Max: math.Max(capacity, used), Text: fmt.Sprintf("%s of %s %s", num(used), num(capacity), unit)}
	},
}

type usage struct {
	Value, Max float64
	Text       string
}

func num(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// timeAgo words how long before now t was: "12 s ago (2026-...)".
func timeAgo(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	var ago string
	switch {
	case d < 0:
		ago = "just now"
	case d < time.Minute:
		ago = fmt.Sprintf("%d s ago", int(d.Seconds()))
	case d < time.Hour:
		ago = fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		ago = fmt.Sprintf("%.1f h ago", d.Hours())
	default:
		ago = fmt.Sprintf("%d days ago", int(d.Hours()/24))
	}
	return ago + " (" + t.UTC().Format("2006-01-02 15:04:05 UTC") + ")"
}

// parse builds one template set per page: the layout, the page's file, and
// the files whose parts it shares (the state badge is in the layout).
func (u *UI) parse() error {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	u.tmpl = map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return fmt.Errorf("ui: parse %s: %w", n, err)
		}
		u.tmpl[name] = t
	}
	return nil
}

// staticVersion is a stamp of the static files' contents, for their URLs:
// a new binary's files are never served from a stale cache.
func staticVersion(static fs.FS) string {
	h := sha256.New()
	_ = fs.WalkDir(static, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(static, p)
		if err != nil {
			return err
		}
		h.Write([]byte(p))
		h.Write(b)
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))[:12]
}
