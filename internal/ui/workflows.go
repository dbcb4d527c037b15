package ui

import (
	"cmp"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tandemhq/tandem"
)

// Workflows is what the workflow pages read of a server: its own view,
// never redirected. *server.Server implements it (as part of
// api.Workflows); a Service that does not has no workflow pages. Cancel and
// retry are requests to the API's workflow routes, which check and audit
// them.
type Workflows interface {
	GetWorkflow(id string) (*tandem.Workflow, error)
	// ListWorkflows returns the runs f selects, oldest first, and the
	// cursor of the next page ("" at the end).
	ListWorkflows(f tandem.WorkflowFilter) ([]*tandem.Workflow, string)
}

type workflowsData struct {
	Filter tandem.WorkflowFilter
	States []tandem.WorkflowState
	// Oldest lists the oldest first (order=oldest, paged by after); the
	// default is newest first (paged by before), so a new run appears at
	// the top of the first page, live.
	Oldest   bool
	Runs     []*tandem.Workflow
	NextURL  string
	FirstURL string
	Count    string
}

// workflowFilter reads the list's filters from the URL: state, schedule,
// q (part of the name), order, the cursor (before, or after with
// order=oldest) and limit. A bad value is an EINVALID error (a 400 page).
func workflowFilter(q url.Values) (f tandem.WorkflowFilter, oldest bool, cursor string, err error) {
	f = tandem.WorkflowFilter{State: tandem.WorkflowState(q.Get("state")), Schedule: strings.TrimSpace(q.Get("schedule")),
		Query: strings.TrimSpace(q.Get("q")), Limit: defaultPageSize}
	if f.State != "" && !slices.Contains(tandem.WorkflowStates, f.State) {
		return f, false, "", tandem.Errorf(tandem.EINVALID, "unknown workflow state %q; known states: %v", f.State, tandem.WorkflowStates)
	}
	switch o := q.Get("order"); o {
	case "", "newest":
		cursor = q.Get("before")
	case "oldest":
		oldest, cursor = true, q.Get("after")
	default:
		return f, false, "", tandem.Errorf(tandem.EINVALID, "order must be newest or oldest, not %q", o)
	}
	for name, v := range map[string]string{"q": f.Query, "schedule": f.Schedule, "cursor": cursor} {
		if len(v) > tandem.MaxNameLen {
			return f, false, "", tandem.Errorf(tandem.EINVALID, "%s is longer than %d bytes", name, tandem.MaxNameLen)
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			return f, false, "", tandem.Errorf(tandem.EINVALID, "limit must be a whole number from 1 to %d, not %q", maxPageSize, v)
		}
		f.Limit = n
	}
	return f, oldest, cursor, nil
}

// workflowValues is the filter as URL parameters, without the cursor.
func workflowValues(f tandem.WorkflowFilter, oldest bool) url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"state": string(f.State), "schedule": f.Schedule, "q": f.Query} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if oldest {
		v.Set("order", "oldest")
	}
	if f.Limit != defaultPageSize {
		v.Set("limit", strconv.Itoa(f.Limit))
	}
	return v
}

func (u *UI) workflows(r *http.Request, s *session) (*view, error) {
	ws := u.svc.(Workflows)
	f, oldest, cursor, err := workflowFilter(r.URL.Query())
	if err != nil {
		return nil, err
	}
	var runs []*tandem.Workflow
	var next string
	if oldest {
		f.After = cursor
		runs, next = ws.ListWorkflows(f)
	} else {
		runs, next = newest(func(after string) ([]*tandem.Workflow, string) {
			pf := f
			pf.After, pf.Limit = after, scanPage
			return ws.ListWorkflows(pf)
		}, func(w *tandem.Workflow) string { return w.ID }, cursor, f.Limit)
	}
	d := workflowsData{Filter: f, States: tandem.WorkflowStates, Oldest: oldest, Runs: runs, Count: plural(len(runs), "workflow run") + " shown"}
	base := workflowValues(f, oldest)
	if next != "" {
		nq := cloneValues(base)
		if oldest {
			nq.Set("after", next)
		} else {
			nq.Set("before", next)
		}
		d.NextURL = "/ui/workflows?" + nq.Encode()
	}
	if cursor != "" {
		d.FirstURL = "/ui/workflows?" + base.Encode()
	}
	if oldest {
		d.Count += ", oldest first"
	} else {
		d.Count += ", newest first"
	}
	if f.State != "" || f.Schedule != "" || f.Query != "" {
		fv := workflowValues(tandem.WorkflowFilter{State: f.State, Schedule: f.Schedule, Query: f.Query, Limit: defaultPageSize}, false)
		d.Count += " (filter: " + strings.ReplaceAll(fv.Encode(), "&", " ") + ")"
	}
	parts := []part{{ID: "wf-count-text", Template: "wf-count", Data: d}}
	for _, wf := range runs {
		parts = append(parts, part{ID: "wf-" + wf.ID, Parent: "wf-rows", Template: "wf-row", Data: wf})
	}
	if len(runs) == 0 {
		parts = append(parts, part{ID: "wf-empty", Parent: "wf-rows", Template: "wf-empty", Data: d})
	}
	return &view{Title: "Workflows", Live: r.URL.RequestURI(), Data: d, Parts: parts}, nil
}

// stepCounts words how far a run's steps are: "2 succeeded, 1 running, 1
// pending".
func stepCounts(wf *tandem.Workflow) string {
	n := map[string]int{}
	var order []string
	for _, st := range wf.Steps {
		s := wf.StepState(st.Name)
		if n[s] == 0 {
			order = append(order, s)
		}
		n[s]++
	}
	slices.SortFunc(order, func(a, b string) int { return cmp.Compare(stepStateRank(a), stepStateRank(b)) })
	var out []string
	for _, s := range order {
		out = append(out, fmt.Sprintf("%d %s", n[s], s))
	}
	if len(out) == 0 {
		return "no steps"
	}
	return strings.Join(out, ", ")
}

func stepStateRank(s string) int {
	i := slices.Index([]string{tandem.StepSucceeded, tandem.StepRunning, tandem.StepPending, tandem.StepFailed,
		tandem.StepUpstreamFailed, tandem.StepSkipped, tandem.StepCancelled}, s)
	if i < 0 {
		return 99
	}
	return i
}

// stepRow is one step of a run, with its place in the DAG.
type stepRow struct {
	Step    tandem.WorkflowStep
	Run     tandem.StepRun
	State   string
	Level   int
	Outputs []string
	// Earlier are the jobs of the step's earlier attempts.
	Earlier []string
	// JobState is the state of the latest attempt's job in the view.
	JobState string
}

type workflowData struct {
	W       *tandem.Workflow
	Steps   []*stepRow
	Levels  [][]*stepRow
	DAG     dagLayout
	Params  []string
	Session *session
}

func (u *UI) workflow(r *http.Request, s *session) (*view, error) {
	wf, err := u.svc.(Workflows).GetWorkflow(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	d := workflowData{W: wf, Session: s, Params: sortedPairs(wf.Params)}
	levels := stepLevels(wf.Steps)
	for _, st := range wf.Steps {
		run := wf.Progress[st.Name]
		row := &stepRow{Step: st, Run: run, State: wf.StepState(st.Name), Level: levels[st.Name], Outputs: sortedPairs(run.Outputs)}
		for _, j := range run.Jobs {
			if j != run.JobID {
				row.Earlier = append(row.Earlier, j)
			}
		}
		if run.JobID != "" {
			if j, _, err := u.svc.Job(run.JobID); err == nil {
				row.JobState = string(j.State)
			}
		}
		d.Steps = append(d.Steps, row)
		for len(d.Levels) <= row.Level {
			d.Levels = append(d.Levels, nil)
		}
		d.Levels[row.Level] = append(d.Levels[row.Level], row)
	}
	d.DAG = drawDAG(d.Levels)
	parts := []part{
		{ID: "wf-summary", Template: "wf-summary", Data: d},
		{ID: "wf-actions", Template: "wf-actions", Data: d},
		{ID: "wf-dag", Template: "wf-dag", Data: d},
	}
	for _, row := range d.Steps {
		parts = append(parts, part{ID: "step-" + row.Step.Name, Parent: "step-rows", Template: "step-row", Data: row})
	}
	return &view{Title: "Workflow run " + wf.ID, Live: r.URL.Path, Data: d, Parts: parts}, nil
}

func sortedPairs(m map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(mapsKeys(m)) {
		out = append(out, k+"="+m[k])
	}
	return out
}

// stepLevels places each step on a topological level: 0 for a step that
// needs none, else one more than the highest level of the steps it needs.
// A need that names no step, or a cycle (neither is accepted by the
// server's validation), counts as nothing, so a bad record still draws.
func stepLevels(steps []tandem.WorkflowStep) map[string]int {
	byName := map[string]tandem.WorkflowStep{}
	for _, st := range steps {
		byName[st.Name] = st
	}
	level := map[string]int{}
	visiting := map[string]bool{}
	var walk func(string) int
	walk = func(name string) int {
		if l, ok := level[name]; ok {
			return l
		}
		st, ok := byName[name]
		if !ok || visiting[name] {
			return -1
		}
		visiting[name] = true
		l := 0
		for _, n := range st.Needs {
			l = max(l, walk(n)+1)
		}
		visiting[name] = false
		level[name] = l
		return l
	}
	for _, st := range steps {
		walk(st.Name)
	}
	return level
}

// dagLayout is the drawing of a run's DAG: one column per level, a box per
// step with its name and state written in it, an arrow per need.
type dagLayout struct {
	Width, Height int
	Nodes         []dagNode
	Edges         []dagEdge
	Desc          string
}

type dagNode struct {
	X, Y         int
	TextX        int
	NameY, StY   int
	Name, State  string
	Label        string
	Text, Title  string
	Level, Index int
}

type dagEdge struct {
	Path     string
	From, To string
}

// Geometry of the DAG drawing, in SVG user units.
const (
	dagNodeW  = 190
	dagNodeH  = 46
	dagColGap = 60
	dagRowGap = 18
	dagMargin = 10
)

func drawDAG(levels [][]*stepRow) dagLayout {
	var l dagLayout
	rows := 0
	for _, lv := range levels {
		rows = max(rows, len(lv))
	}
	l.Width = 2*dagMargin + len(levels)*(dagNodeW+dagColGap) - dagColGap
	l.Height = 2*dagMargin + rows*(dagNodeH+dagRowGap) - dagRowGap
	if len(levels) == 0 {
		l.Width, l.Height = 200, 40
		l.Desc = "The run has no steps."
		return l
	}
	at := map[string]dagNode{}
	var desc []string
	for li, lv := range levels {
		for i, row := range lv {
			n := dagNode{X: dagMargin + li*(dagNodeW+dagColGap), Y: dagMargin + i*(dagNodeH+dagRowGap), Name: row.Step.Name,
				State: row.State, Label: short(row.Step.Name, 24), Level: li, Index: i}
			n.TextX, n.NameY, n.StY = n.X+8, n.Y+19, n.Y+37
			n.Text = row.State
			if row.Run.Attempt > 0 {
				n.Text += fmt.Sprintf(", attempt %d", row.Run.Attempt)
			}
			n.Title = fmt.Sprintf("step %s: %s", row.Step.Name, n.Text)
			if len(row.Step.Needs) > 0 {
				n.Title += "; needs " + strings.Join(row.Step.Needs, ", ")
			}
			at[row.Step.Name] = n
			l.Nodes = append(l.Nodes, n)
			desc = append(desc, n.Title)
		}
	}
	for _, lv := range levels {
		for _, row := range lv {
			to := at[row.Step.Name]
			for _, need := range row.Step.Needs {
				from, ok := at[need]
				if !ok {
					continue
				}
				x1, y1 := from.X+dagNodeW, from.Y+dagNodeH/2
				x2, y2 := to.X-2, to.Y+dagNodeH/2
				l.Edges = append(l.Edges, dagEdge{From: need, To: row.Step.Name,
					Path: fmt.Sprintf("M%d %d C%d %d, %d %d, %d %d", x1, y1, x1+dagColGap/2, y1, x2-dagColGap/2, y2, x2, y2)})
			}
		}
	}
	l.Desc = fmt.Sprintf("%d steps on %d levels: %s.", len(l.Nodes), len(levels), strings.Join(desc, "; "))
	return l
}

// short cuts s to n characters for a box in the drawing (the table beside
// it has the whole name).
func short(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// workflowActions are the run's buttons, like the schedule's.
var workflowActions = map[string]struct {
	Question, Button, Did string
}{
	"cancel": {"Cancel workflow run %s? Its running steps' jobs are killed and no new step starts.", "Yes, cancel %s", "Cancel requested for %s"},
	"retry":  {"Retry workflow run %s? Its failed, cancelled and upstream-failed steps run again; succeeded steps keep their results.", "Yes, retry %s", "Retry requested for %s"},
}

func (u *UI) workflowConfirm(w http.ResponseWriter, r *http.Request) {
	s := sessionOf(r)
	id, action := r.PathValue("id"), r.PathValue("action")
	a, ok := workflowActions[action]
	if !ok {
		u.errorPage(w, r, s, tandem.Errorf(tandem.ENOTFOUND, "no workflow action %q (cancel or retry)", action))
		return
	}
	wf, err := u.svc.(Workflows).GetWorkflow(id)
	if err != nil {
		u.errorPage(w, r, s, err)
		return
	}
	name := wf.ID
	if wf.Name != "" {
		name = wf.Name + " (" + wf.ID + ")"
	}
	back := "/ui/workflows/" + url.PathEscape(id)
	d := confirmData{Action: back + "/" + action, Back: back, Question: fmt.Sprintf(a.Question, name), Button: fmt.Sprintf(a.Button, wf.ID)}
	u.render(w, r, s, http.StatusOK, "confirm", &view{Title: "Confirm " + action, Data: d})
}

func (u *UI) workflowWrite(w http.ResponseWriter, r *http.Request) {
	id, action := r.PathValue("id"), r.PathValue("action")
	a, ok := workflowActions[action]
	if !ok {
		u.errorPage(w, r, sessionOf(r), tandem.Errorf(tandem.ENOTFOUND, "no workflow action %q (cancel or retry)", action))
		return
	}
	res, err := u.call(r, "", http.MethodPost, "/v1/workflows/"+url.PathEscape(id)+"/"+action, nil, nil)
	u.reportWrite(w, r, "/ui/workflows/"+url.PathEscape(id), fmt.Sprintf(a.Did, id), res, err)
}
