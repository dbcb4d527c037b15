package workflow

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
)

func TestValidateOK(t *testing.T) {
	spec := &Spec{
		Name:   "nightly etl",
		Params: map[string]string{"date": "2026-11-30", "env": "prod"},
		Steps: []Step{
			{Name: "extract", Job: jobOf("extract", "--date=${params.date}")},
			{Name: "load", Needs: []string{"extract"}, Retries: 2, Timeout: tandem.Duration(60e9),
				Job:  json.RawMessage(`{"command": ["load", "${steps.extract.outputs.file}"], "env": {"TARGET": "${params.env}", "HOME": "$HOME"}}`),
				When: `steps.extract.outputs.rows != "0" && params.env == 'prod'`},
			{Name: "report", Needs: []string{"load"}, Trigger: AllDone,
				Job:  jobOf("report", "${steps.extract.outputs.file}", "$${literal}"),
				When: `steps.load.state == "succeeded" || steps.load.state == "failed"`},
		},
	}
	if err := spec.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	// The spec reads from JSON with snake_case names.
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"name":`, `"params":`, `"steps":`, `"job":`, `"needs":`, `"retries":2`, `"timeout":"1m0s"`, `"trigger":"all_done"`, `"when":`} {
		if !strings.Contains(string(b), field) {
			t.Errorf("JSON %s lacks %s", b, field)
		}
	}
}

func TestValidateErrors(t *testing.T) {
	many := func(n int) []Step {
		var s []Step
		for i := range n {
			s = append(s, mk(fmt.Sprintf("s%d", i)))
		}
		return s
	}
	withJob := func(name, job string, needs ...string) Step {
		s := mk(name, needs...)
		s.Job = json.RawMessage(job)
		return s
	}
	withWhen := func(s Step, when string) Step { s.When = when; return s }
	params := map[string]string{"env": "prod"}
	tests := []struct {
		name string
		spec *Spec
		want string
	}{
		{"nil", nil, "workflow is empty: give a name and at least one step"},
		{"empty", &Spec{Name: "w"}, `workflow "w" has no steps: give at least one`},
		{"no name", &Spec{Steps: []Step{mk("a")}}, "workflow name is empty: give the workflow a name"},
		{"too many steps", &Spec{Name: "w", Steps: many(MaxSteps + 1)}, "workflow has 201 steps, more than the limit of 200"},
		{"duplicate step", specOf(mk("a"), mk("b"), mk("a")), `step name "a" is used twice: step names must be unique`},
		{"bad step name", specOf(mk("Extract")), `step 1: step name "Extract" is invalid: use a-z, 0-9, '_' and '-', starting with a letter or a digit`},
		{"step name starts with -", specOf(mk("a"), mk("-x")), `step 2: step name "-x" is invalid: use a-z, 0-9, '_' and '-', starting with a letter or a digit`},
		{"long step name", specOf(mk(strings.Repeat("x", 65))), `is 65 bytes, more than the limit of 64`},
		{"missing dep", specOf(mk("a"), mk("b", "a", "x")), `step "b" needs "x", which is not a step of this workflow`},
		{"self dep", specOf(mk("a", "a")), `step "a" needs itself`},
		{"dep twice", specOf(mk("a"), mk("b", "a", "a")), `step "b" lists "a" twice in needs`},
		{"cycle", specOf(mk("a", "c"), mk("b", "a"), mk("c", "b"), mk("d", "a")), "steps form a cycle: a -> c -> b -> a (each step needs the next)"},
		{"cycle off a path", specOf(mk("root"), mk("x", "root", "y"), mk("y", "x")), "steps form a cycle: x -> y -> x (each step needs the next)"},
		{"unknown trigger", specOf(mk("a"), Step{Name: "b", Job: jobOf("true"), Needs: []string{"a"}, Trigger: "sometimes"}),
			`step "b": unknown trigger rule "sometimes": use one of all_success, all_done, one_failed, one_success, none_failed`},
		{"negative retries", specOf(Step{Name: "a", Job: jobOf("true"), Retries: -1}), `step "a": retries must be from 0 to 99, not -1`},
		{"too many retries", specOf(Step{Name: "a", Job: jobOf("true"), Retries: 100}), `step "a": retries must be from 0 to 99, not 100`},
		{"negative timeout", specOf(Step{Name: "a", Job: jobOf("true"), Timeout: -1}), `step "a": timeout must not be negative`},
		{"no job", specOf(Step{Name: "a"}), `step "a": job is missing: give the job to run, as in {"command": ["echo", "hi"]}`},
		{"job unknown field", specOf(withJob("a", `{"command": ["x"], "comand": 1}`)), `step "a": job is not a valid job spec: json: unknown field "comand"`},
		{"job invalid", specOf(withJob("a", `{"command": []}`)), `step "a": job: command is empty: give the program to run and its arguments`},
		{"job max_attempts", specOf(withJob("a", `{"command": ["x"], "max_attempts": 3}`)), `step "a": job sets max_attempts to 3: set the step's retries instead`},
		{"bad param name", &Spec{Name: "w", Params: map[string]string{"a.b": "x"}, Steps: []Step{mk("a")}}, `param name "a.b" is invalid`},
		{"param too long", &Spec{Name: "w", Params: map[string]string{"p": strings.Repeat("x", MaxParamValueLen+1)}, Steps: []Step{mk("a")}}, `param p is 4097 bytes, more than the limit of 4096`},
		{"condition syntax", specOf(mk("a"), withWhen(mk("b", "a"), `steps.a.outputs.k = "v"`)),
			`step "b": when "steps.a.outputs.k = \"v\"": column 19: '=' is not an operator: use ==, !=, && or ||`},
		{"condition unclosed paren", specOf(mk("a"), withWhen(mk("b", "a"), `(steps.a.outputs.k == "v"`)),
			`column 26: expected ) to close the ( at column 1, found the end of the condition`},
		{"condition not boolean", specOf(mk("a"), withWhen(mk("b", "a"), `steps.a.outputs.ok`)),
			`the condition must be true or false, but steps.a.outputs.ok is a string: compare it, as in steps.a.outputs.ok == "yes"`},
		{"condition non-ancestor", specOf(mk("a"), mk("b", "a"), withWhen(mk("c", "a"), `steps.b.outputs.k == "v"`)),
			`step "c": when refers to steps.b.outputs.k, but "b" is not an ancestor of "c": add it to needs, directly or through a step it needs`},
		{"condition on itself", specOf(mk("a"), withWhen(mk("b", "a"), `steps.b.state == "failed"`)),
			`step "b": when refers to steps.b.state: a step cannot refer to itself, only to steps it needs (directly or not)`},
		{"condition unknown step", specOf(withWhen(mk("a"), `steps.zz.state == "failed"`)),
			`step "a": when refers to steps.zz.state, but there is no step "zz"`},
		{"condition unknown param", &Spec{Name: "w", Params: params, Steps: []Step{withWhen(mk("a"), `params.nope == "x"`)}},
			`step "a": when refers to params.nope, which is not in the workflow's params`},
		{"condition too long", specOf(withWhen(mk("a"), strings.Repeat("!", MaxWhenLen)+"true")), `step "a": when is 1028 bytes, more than the limit of 1024`},
		{"template non-ancestor", specOf(mk("a"), withJob("b", `{"command": ["x", "${steps.a.outputs.k}"]}`)),
			`step "b": job command[1] refers to steps.a.outputs.k, but "a" is not an ancestor of "b": add it to needs`},
		{"template in env", specOf(mk("a"), withJob("b", `{"command": ["x"], "env": {"K": "${params.nope}"}}`, "a")),
			`step "b": job env K refers to params.nope, which is not in the workflow's params`},
		{"template unclosed", specOf(withJob("a", `{"command": ["echo", "${params.env"]}`)),
			`step "a": job command[1]: ${ at byte 0 is not closed with }`},
		{"template shell variable", specOf(withJob("a", `{"command": ["sh", "-c", "echo ${HOME}"]}`)),
			`step "a": job command[2]: ${HOME}: unknown reference "HOME": use params.NAME or steps.STEP.outputs.KEY (write $${ for a literal ${)`},
		{"template state", specOf(mk("a"), withJob("b", `{"command": ["echo", "${steps.a.state}"]}`, "a")),
			`unknown reference "steps.a.state": use params.NAME or steps.STEP.outputs.KEY`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if err == nil {
				t.Fatalf("got no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to contain %q", err, tt.want)
			}
			var te *tandem.Error
			if !errors.As(err, &te) || te.Code != tandem.EINVALID {
				t.Errorf("got %#v, want a *tandem.Error with code %s", err, tandem.EINVALID)
			}
			// The API shows the message of the first *tandem.Error: it
			// must be the whole message.
			if got := tandem.ErrorMessage(err); got != err.Error() {
				t.Errorf("the API would show %q, want %q", got, err)
			}
		})
	}
}

// TestValidateFirstError: with several problems, the one reported does not
// depend on map order or on chance.
func TestValidateFirstError(t *testing.T) {
	spec := &Spec{Name: "w", Params: map[string]string{"b.": "", "a.": ""}, Steps: []Step{mk("a", "x"), mk("b", "y")}}
	for range 20 {
		if got, want := spec.Validate().Error(), `param name "a." is invalid: use up to 64 bytes of letters, digits, '_' and '-', starting with a letter or '_'`; got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

func TestValidateMaxSteps(t *testing.T) {
	// 200 steps in a chain, each referring to the first one's output, is
	// fine.
	var steps []Step
	for i := range MaxSteps {
		s := mk(fmt.Sprintf("s%03d", i))
		if i > 0 {
			s.Needs = []string{fmt.Sprintf("s%03d", i-1)}
			s.When = `steps.s000.outputs.go == "yes"`
		}
		steps = append(steps, s)
	}
	if err := specOf(steps...).Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}
