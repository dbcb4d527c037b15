package workflow

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/tandemhq/tandem"
)

// Limits on a workflow spec, enforced by Spec.Validate.
const (
	MaxSteps         = 200
	MaxStepNameLen   = 64
	MaxKeyLen        = 64 // a parameter name or an output key
	MaxParams        = 64
	MaxParamValueLen = 4096
	MaxRetries       = tandem.MaxMaxAttempts - 1
	MaxWhenLen       = 1024
	MaxStepJobBytes  = 64 << 10
)

// TriggerRule says, from the final states of a step's needs, whether the step
// runs, or ends skipped or upstream_failed without running. The rules keep
// Airflow's meanings; doc.go has the exact table.
type TriggerRule string

// Trigger rules. The empty rule means AllSuccess.
const (
	AllSuccess TriggerRule = "all_success"
	AllDone    TriggerRule = "all_done"
	OneFailed  TriggerRule = "one_failed"
	OneSuccess TriggerRule = "one_success"
	NoneFailed TriggerRule = "none_failed"
)

// TriggerRules lists every trigger rule, for validation and documentation.
var TriggerRules = []TriggerRule{AllSuccess, AllDone, OneFailed, OneSuccess, NoneFailed}

// Spec is a workflow as a user submits it (the body of POST /v1/workflows).
// Its Params are the values of this run's parameters: a caller that lets a
// schedule or a user override them stores the resolved spec.
type Spec struct {
	Name   string            `json:"name"`
	Params map[string]string `json:"params,omitempty"`
	Steps  []Step            `json:"steps"`
}

// Step is one node of a workflow: a job to run once the steps it needs have
// finished and its trigger rule and condition allow it.
type Step struct {
	// Name is unique in the workflow: 1 to MaxStepNameLen bytes of
	// [a-z0-9_-], starting with a letter or a digit.
	Name string `json:"name"`
	// Job is a tandem.JobSpec in JSON, whose command arguments and env
	// values may hold ${params.NAME} and ${steps.STEP.outputs.KEY}
	// references (see Render).
	Job json.RawMessage `json:"job"`
	// Needs names the steps that must have finished before this one is
	// decided.
	Needs []string `json:"needs,omitempty"`
	// Retries is how many more attempts a failed step gets (0 to
	// MaxRetries): a step runs at most Retries+1 times.
	Retries int `json:"retries,omitempty"`
	// Timeout, when positive, fails an attempt still running that long
	// after it started (Decide reports the deadline; the controller acts).
	Timeout tandem.Duration `json:"timeout,omitempty"`
	// Trigger is the step's trigger rule; empty means all_success.
	Trigger TriggerRule `json:"trigger,omitempty"`
	// When, if not empty, is a condition (see doc.go) evaluated once the
	// trigger rule says the step runs; false skips the step.
	When string `json:"when,omitempty"`
}

// Validate reports the first problem with the spec as an EINVALID
// *tandem.Error, or nil. It checks the names and limits, that every need
// names another step and the needs have no cycle, every trigger rule,
// every condition and every reference in a step's job (a step may refer only
// to parameters that exist and to outputs of its ancestors), and each step's
// job as a tandem.JobSpec.
func (s *Spec) Validate() error {
	_, err := compile(s, true)
	return err
}

// graph is a validated spec, compiled for Decide.
type graph struct {
	spec  *Spec
	nodes []*node // in canonical topological order
	named map[string]*node
}

type node struct {
	step      *Step
	index     int // position in graph.nodes
	needs     []*node
	ancestors bitset // by index: the steps this one needs, directly or not
	trigger   TriggerRule
	when      boolExpr // nil: no condition
}

func invalid(format string, args ...any) error {
	return tandem.Errorf(tandem.EINVALID, format, args...)
}

// prefix returns err with p before its message. A *tandem.Error stays one
// *tandem.Error with the same code rather than being wrapped: the API shows
// the message of the first *tandem.Error in a chain, which would drop p.
func prefix(p string, err error) error {
	var te *tandem.Error
	if errors.As(err, &te) {
		return &tandem.Error{Code: te.Code, Message: p + ": " + te.Message}
	}
	return fmt.Errorf("%s: %w", p, err)
}

// compile validates s and builds its graph. Checks run in a fixed order, so
// the first problem reported for a given spec is always the same. Without
// jobs, the steps' jobs are not read: Decide does not need them, and
// decoding 200 of them would be most of its cost.
func compile(s *Spec, jobs bool) (*graph, error) {
	if s == nil {
		return nil, invalid("workflow is empty: give a name and at least one step")
	}
	if err := checkName(s.Name); err != nil {
		return nil, err
	}
	if err := checkParams(s.Params); err != nil {
		return nil, err
	}
	if len(s.Steps) == 0 {
		return nil, invalid("workflow %q has no steps: give at least one", s.Name)
	}
	if len(s.Steps) > MaxSteps {
		return nil, invalid("workflow has %d steps, more than the limit of %d", len(s.Steps), MaxSteps)
	}
	g := &graph{spec: s, named: make(map[string]*node, len(s.Steps))}
	all := make([]*node, len(s.Steps))
	for i := range s.Steps {
		st := &s.Steps[i]
		if err := checkStepName(st.Name); err != nil {
			return nil, prefix(fmt.Sprintf("step %d", i+1), err)
		}
		if _, dup := g.named[st.Name]; dup {
			return nil, invalid("step name %q is used twice: step names must be unique", st.Name)
		}
		n := &node{step: st, trigger: st.Trigger}
		if n.trigger == "" {
			n.trigger = AllSuccess
		}
		if !slices.Contains(TriggerRules, n.trigger) {
			return nil, invalid("step %q: unknown trigger rule %q: use one of %s", st.Name, st.Trigger, ruleList())
		}
		if st.Retries < 0 || st.Retries > MaxRetries {
			return nil, invalid("step %q: retries must be from 0 to %d, not %d", st.Name, MaxRetries, st.Retries)
		}
		if st.Timeout < 0 {
			return nil, invalid("step %q: timeout must not be negative", st.Name)
		}
		g.named[st.Name] = n
		all[i] = n
	}
	for _, n := range all {
		seen := make(map[string]bool, len(n.step.Needs))
		for _, need := range n.step.Needs {
			switch m, ok := g.named[need]; {
			case need == n.step.Name:
				return nil, invalid("step %q needs itself", need)
			case !ok:
				return nil, invalid("step %q needs %q, which is not a step of this workflow", n.step.Name, need)
			case seen[need]:
				return nil, invalid("step %q lists %q twice in needs", n.step.Name, need)
			default:
				seen[need] = true
				n.needs = append(n.needs, m)
			}
		}
	}
	if cycle := findCycle(all); cycle != nil {
		return nil, invalid("steps form a cycle: %s (each step needs the next)", strings.Join(cycle, " -> "))
	}
	g.nodes = topoOrder(all)
	for i, n := range g.nodes {
		n.index = i
		n.ancestors = make(bitset, (len(g.nodes)+63)/64)
		for _, m := range n.needs { // placed before n, so m.ancestors is complete
			n.ancestors.set(m.index)
			n.ancestors.or(m.ancestors)
		}
	}
	// Conditions and jobs are checked in spec order, so the error for a spec
	// with several problems does not depend on the topological order.
	for _, n := range all {
		if err := g.compileStep(n, jobs); err != nil {
			return nil, prefix(fmt.Sprintf("step %q", n.step.Name), err)
		}
	}
	return g, nil
}

func (g *graph) compileStep(n *node, jobs bool) error {
	st := n.step
	if st.When != "" {
		if len(st.When) > MaxWhenLen {
			return invalid("when is %d bytes, more than the limit of %d", len(st.When), MaxWhenLen)
		}
		e, refs, err := parseCondition(st.When)
		if err != nil {
			return err
		}
		for _, r := range refs {
			if err := g.checkRef(n, r, "when"); err != nil {
				return err
			}
		}
		n.when = e
	}
	if !jobs {
		return nil
	}
	if len(bytes.TrimSpace(st.Job)) == 0 {
		return invalid("job is missing: give the job to run, as in {\"command\": [\"echo\", \"hi\"]}")
	}
	if len(st.Job) > MaxStepJobBytes {
		return invalid("job is %d bytes, more than the limit of %d", len(st.Job), MaxStepJobBytes)
	}
	js, err := decodeJob(st.Job)
	if err != nil {
		return err
	}
	if js.MaxAttempts > 1 {
		return invalid("job sets max_attempts to %d: set the step's retries instead, so that every attempt is one the workflow records", js.MaxAttempts)
	}
	if err := js.Validate(); err != nil {
		return prefix("job", err)
	}
	return forEachTemplate(&js, func(field, s string) error {
		t, err := parseTemplate(s)
		if err != nil {
			return invalid("job %s: %v", field, err)
		}
		for _, seg := range t {
			if seg.literal {
				continue
			}
			if err := g.checkRef(n, seg.ref, "job "+field); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkRef refuses a reference to a parameter that does not exist or to a
// step that is not an ancestor of n. Only ancestors are certain to have
// finished, with their outputs final, when n is decided or started.
func (g *graph) checkRef(n *node, r ref, where string) error {
	switch r.kind {
	case refParam:
		if _, ok := g.spec.Params[r.key]; !ok {
			return invalid("%s refers to %s, which is not in the workflow's params", where, r)
		}
	default:
		m, ok := g.named[r.step]
		if !ok {
			return invalid("%s refers to %s, but there is no step %q", where, r, r.step)
		}
		if r.step == n.step.Name {
			return invalid("%s refers to %s: a step cannot refer to itself, only to steps it needs (directly or not)", where, r)
		}
		if !n.ancestors.has(m.index) {
			return invalid("%s refers to %s, but %q is not an ancestor of %q: add it to needs, directly or through a step it needs", where, r, r.step, n.step.Name)
		}
	}
	return nil
}

// decodeJob reads a step's job strictly, as the API reads a job body: no
// unknown fields and one JSON value.
func decodeJob(raw json.RawMessage) (tandem.JobSpec, error) {
	var js tandem.JobSpec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&js); err != nil {
		return js, invalid("job is not a valid job spec: %v", err)
	}
	if dec.More() {
		return js, invalid("job is not a valid job spec: unexpected data after the JSON object")
	}
	return js, nil
}

// forEachTemplate calls f for every field of js that may hold references:
// each command argument and each env value, in a fixed order.
func forEachTemplate(js *tandem.JobSpec, f func(field, s string) error) error {
	for i, a := range js.Command {
		if err := f(fmt.Sprintf("command[%d]", i), a); err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(js.Env) {
		if err := f(fmt.Sprintf("env %s", k), js.Env[k]); err != nil {
			return err
		}
	}
	return nil
}

func checkName(name string) error {
	switch {
	case strings.TrimSpace(name) == "":
		return invalid("workflow name is empty: give the workflow a name")
	case len(name) > tandem.MaxNameLen:
		return invalid("workflow name is %d bytes, more than the limit of %d", len(name), tandem.MaxNameLen)
	case !utf8.ValidString(name):
		return invalid("workflow name is not valid UTF-8")
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return invalid("workflow name %q contains the control character %q", name, r)
		}
	}
	return nil
}

func checkStepName(name string) error {
	if name == "" {
		return invalid("step name is empty")
	}
	if len(name) > MaxStepNameLen {
		return invalid("step name %q is %d bytes, more than the limit of %d", name, len(name), MaxStepNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '-') {
			return invalid("step name %q is invalid: use a-z, 0-9, '_' and '-', starting with a letter or a digit", name)
		}
	}
	return nil
}

// validKey reports whether k can name a parameter or an output:
// [A-Za-z_][A-Za-z0-9_-]*, at most MaxKeyLen bytes.
func validKey(k string) bool {
	if k == "" || len(k) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && (c >= '0' && c <= '9' || c == '-')
		if !ok {
			return false
		}
	}
	return true
}

const keySyntax = "letters, digits, '_' and '-', starting with a letter or '_'"

func checkParams(p map[string]string) error {
	if len(p) > MaxParams {
		return invalid("workflow has %d params, more than the limit of %d", len(p), MaxParams)
	}
	for _, k := range sortedKeys(p) {
		v := p[k]
		switch {
		case !validKey(k):
			return invalid("param name %q is invalid: use up to %d bytes of %s", k, MaxKeyLen, keySyntax)
		case len(v) > MaxParamValueLen:
			return invalid("param %s is %d bytes, more than the limit of %d", k, len(v), MaxParamValueLen)
		case !utf8.ValidString(v) || strings.IndexByte(v, 0) >= 0:
			return invalid("param %s must be UTF-8 text without NUL bytes", k)
		}
	}
	return nil
}

// findCycle returns the steps of a cycle in needs, first step repeated at
// the end, or nil. The search visits steps and needs in spec order, so the
// cycle named for a given spec is always the same.
func findCycle(all []*node) []string {
	const (
		unvisited = iota
		onPath
		done
	)
	color := make(map[*node]int, len(all))
	var path []*node
	var visit func(n *node) []string
	visit = func(n *node) []string {
		color[n] = onPath
		path = append(path, n)
		for _, m := range n.needs {
			switch color[m] {
			case onPath:
				i := slices.Index(path, m)
				var names []string
				for _, p := range path[i:] {
					names = append(names, p.step.Name)
				}
				return append(names, m.step.Name)
			case unvisited:
				if c := visit(m); c != nil {
					return c
				}
			}
		}
		path = path[:len(path)-1]
		color[n] = done
		return nil
	}
	for _, n := range all {
		if color[n] == unvisited {
			if c := visit(n); c != nil {
				return c
			}
		}
	}
	return nil
}

// topoOrder returns the nodes of an acyclic graph so that every step comes
// after all it needs, taking at each point the smallest name among the steps
// whose needs are all placed (Kahn's algorithm): the canonical order in which
// Decide lists its decisions. It depends on the graph alone, not on the
// order of the steps in the spec.
func topoOrder(all []*node) []*node {
	waiting := make(map[*node]int, len(all)) // needs not yet placed
	users := make(map[*node][]*node, len(all))
	var ready []*node
	for _, n := range all {
		waiting[n] = len(n.needs)
		for _, m := range n.needs {
			users[m] = append(users[m], n)
		}
		if len(n.needs) == 0 {
			ready = append(ready, n)
		}
	}
	order := make([]*node, 0, len(all))
	for len(ready) > 0 {
		i := 0
		for j, n := range ready {
			if n.step.Name < ready[i].step.Name {
				i = j
			}
		}
		n := ready[i]
		ready = slices.Delete(ready, i, i+1)
		order = append(order, n)
		for _, u := range users[n] {
			if waiting[u]--; waiting[u] == 0 {
				ready = append(ready, u)
			}
		}
	}
	return order
}

// bitset is a set of small integers.
type bitset []uint64

func (b bitset) set(i int)      { b[i/64] |= 1 << (i % 64) }
func (b bitset) has(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitset) or(c bitset) {
	for i := range b {
		b[i] |= c[i]
	}
}

func ruleList() string {
	var s []string
	for _, r := range TriggerRules {
		s = append(s, string(r))
	}
	return strings.Join(s, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
