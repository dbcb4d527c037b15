package ui

import (
	"cmp"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/store"
)

// pageList is the UI's pages, in nav bar order. The schedule and workflow
// pages are there only when the Service has schedules (Schedules) and
// workflows (Workflows), as the API's routes are.
func (u *UI) pageList() []*Page {
	pages := []*Page{
		{Pattern: "GET /ui/{$}", Nav: "Overview", NavPath: "/ui/", Template: "overview", Build: u.overview},
		{Pattern: "GET /ui/jobs", Nav: "Jobs", NavPath: "/ui/jobs", Template: "jobs", Build: u.jobs},
		{Pattern: "GET /ui/jobs/{id}", Template: "job", Build: u.job},
	}
	if _, ok := u.svc.(Schedules); ok {
		pages = append(pages,
			&Page{Pattern: "GET /ui/schedules", Nav: "Schedules", NavPath: "/ui/schedules", Template: "schedules", Build: u.schedules},
			&Page{Pattern: "GET /ui/schedules/{id}", Template: "schedule", Build: u.schedule})
	}
	if _, ok := u.svc.(Workflows); ok {
		pages = append(pages,
			&Page{Pattern: "GET /ui/workflows", Nav: "Workflows", NavPath: "/ui/workflows", Template: "workflows", Build: u.workflows},
			&Page{Pattern: "GET /ui/workflows/{id}", Template: "workflow", Build: u.workflow})
	}
	return append(pages,
		&Page{Pattern: "GET /ui/cluster", Nav: "Cluster", NavPath: "/ui/cluster", Template: "cluster", Build: u.cluster},
		&Page{Pattern: "GET /ui/ha", Nav: "HA timeline", NavPath: "/ui/ha", Template: "ha", Build: u.ha},
		&Page{Pattern: "GET /ui/agents", Nav: "Agents", NavPath: "/ui/agents", Template: "agents", Build: u.agents},
		&Page{Pattern: "GET /ui/agents/{id}", Template: "agent", Build: u.agent})
}

// allJobs walks the whole view in pages.
func (u *UI) allJobs(state tandem.JobState, each func(*tandem.Job)) {
	after := ""
	for {
		jobs, next := u.svc.Jobs(after, 1000, state)
		for _, j := range jobs {
			each(j)
		}
		if next == "" {
			return
		}
		after = next
	}
}

type stateCount struct {
	State tandem.JobState
	N     int
}

type overviewData struct {
	Counts    []stateCount
	Total     int
	Live      int
	Ready     int
	Lost      int
	Owners    []tandem.ShardInfo
	Failures  []*tandem.Job
	Shards    int
	Now       time.Time
	ActiveRef string
}

// recentFailures is how many failed or lost jobs the overview lists.
const recentFailures = 10

func (u *UI) overview(r *http.Request, s *session) (*view, error) {
	d := overviewData{Shards: u.svc.Shards(), Now: u.cfg.Now()}
	counts := map[tandem.JobState]int{}
	u.allJobs("", func(j *tandem.Job) {
		counts[j.State]++
		d.Total++
		if j.State == tandem.JobFailed || j.State == tandem.JobLost {
			d.Failures = append(d.Failures, j)
		}
	})
	for _, st := range tandem.JobStates {
		d.Counts = append(d.Counts, stateCount{st, counts[st]})
	}
	d.Live = counts[tandem.JobScheduled] + counts[tandem.JobRunning]
	sort.Slice(d.Failures, func(a, b int) bool { return d.Failures[a].UpdatedAt.After(d.Failures[b].UpdatedAt) })
	if len(d.Failures) > recentFailures {
		d.Failures = d.Failures[:recentFailures]
	}
	for _, a := range u.svc.Agents() {
		if a.State == tandem.AgentReady {
			d.Ready++
		} else {
			d.Lost++
		}
	}
	d.Owners = u.svc.ShardInfos()
	return &view{Title: "Overview", Live: "/ui/", Data: d, Parts: []part{
		{ID: "ov-jobs", Template: "ov-jobs", Data: d},
		{ID: "ov-agents", Template: "ov-agents", Data: d},
		{ID: "ov-owners", Template: "ov-owners", Data: d},
		{ID: "ov-failures", Template: "ov-failures", Data: d},
	}}, nil
}

// Page sizes of the job list.
const (
	defaultPageSize = 50
	maxPageSize     = 500
)

type jobsData struct {
	Filter store.JobFilter
	States []tandem.JobState
	// Oldest lists the oldest first (order=oldest, paged by after);
	// the default is newest first (paged by before), so a new job appears
	// at the top of the first page, live.
	Oldest   bool
	Jobs     []*tandem.Job
	Next     string
	After    string
	Limit    int
	NextURL  string
	FirstURL string
	Agents   []string
	Count    string
}

func (u *UI) jobs(r *http.Request, s *session) (*view, error) {
	q := r.URL.Query()
	f, err := store.JobFilterFromQuery(q)
	if err != nil {
		return nil, err
	}
	limit := defaultPageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			return nil, tandem.Errorf(tandem.EINVALID, "limit must be a whole number from 1 to %d, not %q", maxPageSize, v)
		}
		limit = n
	}
	d := jobsData{Filter: f, States: tandem.JobStates, Limit: limit}
	switch o := q.Get("order"); o {
	case "", "newest":
	case "oldest":
		d.Oldest = true
	default:
		return nil, tandem.Errorf(tandem.EINVALID, "order must be newest or oldest, not %q", o)
	}
	base := f.Values()
	if limit != defaultPageSize {
		base.Set("limit", strconv.Itoa(limit))
	}
	cursor := "before"
	if d.Oldest {
		base.Set("order", "oldest")
		cursor = "after"
		d.After = q.Get("after")
		d.Jobs, d.Next = store.FilterJobs(u.svc.Jobs, d.After, limit, f)
	} else {
		d.After = q.Get("before")
		d.Jobs, d.Next = u.newestJobs(f, d.After, limit)
	}
	if d.Next != "" {
		nq := cloneValues(base)
		nq.Set(cursor, d.Next)
		d.NextURL = "/ui/jobs?" + nq.Encode()
	}
	if d.After != "" {
		d.FirstURL = "/ui/jobs?" + base.Encode()
	}
	for _, a := range u.svc.Agents() {
		d.Agents = append(d.Agents, a.ID)
	}
	d.Count = fmt.Sprintf("%d jobs shown", len(d.Jobs))
	if len(d.Jobs) == 1 {
		d.Count = "1 job shown"
	}
	if d.Oldest {
		d.Count += ", oldest first"
	} else {
		d.Count += ", newest first"
	}
	parts := []part{{ID: "jobs-count-text", Template: "jobs-count", Data: d}}
	for _, j := range d.Jobs {
		parts = append(parts, part{ID: "job-" + j.ID, Parent: "jobs-rows", Template: "job-row", Data: j})
	}
	if len(d.Jobs) == 0 {
		parts = append(parts, part{ID: "jobs-empty", Parent: "jobs-rows", Template: "jobs-empty", Data: d})
	}
	return &view{Title: "Jobs", Live: r.URL.RequestURI(), Data: d, Parts: parts}, nil
}

// newestJobs returns the newest limit jobs that pass f and are older than
// the job before ("" for the newest of all), newest first, and the cursor
// of the next (older) page ("" at the end).
func (u *UI) newestJobs(f store.JobFilter, before string, limit int) ([]*tandem.Job, string) {
	return newest(func(after string) ([]*tandem.Job, string) {
		jobs, next := u.svc.Jobs(after, scanPage, f.State)
		return slices.DeleteFunc(jobs, func(j *tandem.Job) bool { return !f.Match(j) }), next
	}, func(j *tandem.Job) string { return j.ID }, before, limit)
}

// scanPage is how many items newest asks for at a time.
const scanPage = 1000

// newest returns the newest limit items older than the item before ("" for
// the newest of all), newest first, and the cursor of the next (older) page
// ("" at the end). page lists the items after a cursor oldest first (IDs
// sort in creation order), as the server's views do, so newest walks them
// once, keeping the last limit: the price the overview's counts already pay
// on every render, and the server's own listings stay untouched.
func newest[T any](page func(after string) ([]T, string), id func(T) string, before string, limit int) ([]T, string) {
	var keep []T
	older := false // an item older than those kept exists
	after := ""
walk:
	for {
		items, next := page(after)
		for _, it := range items {
			if before != "" && id(it) >= before {
				break walk
			}
			keep = append(keep, it)
			if len(keep) > 2*limit {
				keep, older = append([]T(nil), keep[len(keep)-limit:]...), true
			}
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(keep) > limit {
		keep, older = keep[len(keep)-limit:], true
	}
	slices.Reverse(keep)
	if !older || len(keep) == 0 {
		return keep, ""
	}
	return keep, id(keep[len(keep)-1])
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

type timelineEntry struct {
	Time  time.Time
	State string
	Note  string
}

type jobData struct {
	Job      *tandem.Job
	Env      []envVar
	Timeline []timelineEntry
	Attempt  int // the attempt the log panel shows first
}

type envVar struct{ Name, Masked string }

func (u *UI) job(r *http.Request, s *session) (*view, error) {
	j, _, err := u.svc.Job(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	d := jobData{Job: j, Timeline: timeline(j), Attempt: len(j.Attempts)}
	for _, k := range slices.Sorted(mapsKeys(j.Env)) {
		// Values are masked: a job's environment often carries secrets.
		d.Env = append(d.Env, envVar{Name: k, Masked: "•••• (" + strconv.Itoa(len(j.Env[k])) + " bytes, hidden)"})
	}
	return &view{Title: "Job " + j.ID, Live: r.URL.Path, Data: d, Parts: []part{
		{ID: "job-summary", Template: "job-summary", Data: d},
		{ID: "job-actions", Template: "job-actions", Data: actionsData{Job: j, Session: s}},
		{ID: "job-timeline", Template: "job-timeline", Data: d},
		{ID: "job-attempts", Template: "job-attempts", Data: d},
		{ID: "log-attempt", Template: "log-attempt", Data: d},
	}}, nil
}

type actionsData struct {
	Job     *tandem.Job
	Session *session
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// timeline lists what happened to job j, oldest first, from what its record
// keeps: its submission, each attempt's scheduling, start and end, and its
// final state.
func timeline(j *tandem.Job) []timelineEntry {
	out := []timelineEntry{{Time: j.CreatedAt, State: "pending", Note: "submitted" + by(j.Submitter) + ", accepted by " + j.AcceptedBy}}
	for _, a := range j.Attempts {
		out = append(out, timelineEntry{Time: a.ScheduledAt, State: "scheduled", Note: fmt.Sprintf("attempt %d on agent %s (epoch %d)", a.Number, a.Agent, a.Epoch)})
		if a.StartedAt != nil {
			out = append(out, timelineEntry{Time: *a.StartedAt, State: "running", Note: fmt.Sprintf("attempt %d started, pid %d", a.Number, a.PID)})
		}
		if a.EndedAt != nil {
			out = append(out, timelineEntry{Time: *a.EndedAt, State: string(a.State), Note: fmt.Sprintf("attempt %d ended: %s", a.Number, exitText(a))})
		}
	}
	if j.State.Terminal() {
		out = append(out, timelineEntry{Time: j.UpdatedAt, State: string(j.State), Note: cmp.Or(j.Reason, "job ended")})
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Time.Before(out[b].Time) })
	return out
}

func by(who string) string {
	if who == "" {
		return ""
	}
	return " by " + who
}

// exitText words how an attempt ended: exit code or signal, and why.
func exitText(a tandem.Attempt) string {
	s := ""
	switch {
	case a.Signal != "":
		s = "signal " + a.Signal
	case a.ExitCode != nil:
		s = "exit " + strconv.Itoa(*a.ExitCode)
	}
	if a.Reason != "" {
		if s != "" {
			s += "; "
		}
		s += a.Reason
	}
	if s == "" {
		return "—"
	}
	return s
}

type clusterData struct {
	Servers  []tandem.ServerInfo
	Shards   []tandem.ShardInfo
	Self     string
	ActiveID string
	Epoch    int64
	Sharded  bool
	Session  *session
	Version  string
	// Etcd is what etcd says of its members (nil when the Service cannot
	// say).
	Etcd *etcdView
}

func (u *UI) cluster(r *http.Request, s *session) (*view, error) {
	st := u.svc.Status()
	d := clusterData{Servers: u.svc.Servers(), Shards: u.svc.ShardInfos(), Self: st.ID, ActiveID: st.ActiveID,
		Epoch: st.Epoch, Sharded: st.Shards > 1, Session: s, Version: tandem.Version, Etcd: u.etcd(r.Context())}
	parts := []part{{ID: "cluster-actions", Template: "cluster-actions", Data: d}, {ID: "shards", Template: "shards", Data: d}}
	if d.Etcd != nil {
		parts = append(parts, part{ID: "etcd", Template: "etcd", Data: d})
	}
	for _, sv := range d.Servers {
		parts = append(parts, part{ID: "server-" + sv.ID, Parent: "server-rows", Template: "server-row", Data: serverRow{S: sv, D: d}})
	}
	return &view{Title: "Cluster", Live: "/ui/cluster", Data: d, Parts: parts}, nil
}

type serverRow struct {
	S tandem.ServerInfo
	D clusterData
}

// Epoch returns the epoch of the shards the row's server owns, if one shard.
func (r serverRow) Epoch() int64 {
	for _, sh := range r.D.Shards {
		if sh.Owner == r.S.ID {
			return sh.Epoch
		}
	}
	return 0
}

type haData struct {
	Events []tandem.FailoverEvent
	SVG    svgTimeline
}

func (u *UI) ha(r *http.Request, s *session) (*view, error) {
	evs := u.svc.History()
	d := haData{Events: evs, SVG: drawTimeline(evs, u.cfg.Now())}
	parts := []part{{ID: "ha-svg", Template: "ha-svg", Data: d}}
	for i := range evs {
		parts = append(parts, part{ID: fmt.Sprintf("ev-%d-%d", evs[i].Shard, evs[i].Epoch), Parent: "ha-rows", Template: "ha-row", Data: evs[i]})
	}
	return &view{Title: "HA timeline", Live: "/ui/ha", Data: d, Parts: parts}, nil
}

type agentsData struct {
	Agents []tandem.AgentStatus
	Now    time.Time
}

type agentRow struct {
	A   tandem.AgentStatus
	Now time.Time
}

func (u *UI) agents(r *http.Request, s *session) (*view, error) {
	d := agentsData{Agents: u.svc.Agents(), Now: u.cfg.Now()}
	var parts []part
	for _, a := range d.Agents {
		parts = append(parts, part{ID: "agent-" + a.ID, Parent: "agent-rows", Template: "agent-row", Data: agentRow{A: a, Now: d.Now}})
	}
	return &view{Title: "Agents", Live: "/ui/agents", Data: d, Parts: parts}, nil
}

type agentData struct {
	A    tandem.AgentStatus
	Jobs []*tandem.Job
	Now  time.Time
}

func (u *UI) agent(r *http.Request, s *session) (*view, error) {
	id := r.PathValue("id")
	all := u.svc.Agents()
	i := slices.IndexFunc(all, func(a tandem.AgentStatus) bool { return a.ID == id })
	if i < 0 {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "no agent %q", id)
	}
	d := agentData{A: all[i], Now: u.cfg.Now()}
	for _, st := range []tandem.JobState{tandem.JobScheduled, tandem.JobRunning} {
		u.allJobs(st, func(j *tandem.Job) {
			if a := j.LastAttempt(); a != nil && a.Agent == id {
				d.Jobs = append(d.Jobs, j)
			}
		})
	}
	return &view{Title: "Agent " + id, Live: r.URL.Path, Data: d, Parts: []part{
		{ID: "agent-summary", Template: "agent-summary", Data: d},
		{ID: "agent-jobs", Template: "agent-jobs", Data: d},
	}}, nil
}
