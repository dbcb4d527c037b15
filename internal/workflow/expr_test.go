package workflow

import (
	"strings"
	"testing"
)

func TestConditionEval(t *testing.T) {
	values := map[string]string{
		"params.env":          "prod",
		"params.empty":        "",
		"steps.a.outputs.k":   "v",
		"steps.a.outputs.q":   `say "hi"`,
		"steps.a.state":       "succeeded",
		"steps.b-2.outputs.n": "3",
	}
	look := func(r ref) string { return values[r.String()] }
	tests := []struct {
		cond string
		want bool
	}{
		{`true`, true},
		{`false`, false},
		{`steps.a.outputs.k == "v"`, true},
		{`steps.a.outputs.k == 'v'`, true},
		{`steps.a.outputs.k != "v"`, false},
		{`"v" == steps.a.outputs.k`, true},
		{`steps.a.outputs.q == "say \"hi\""`, true},
		{`steps.a.outputs.q == 'say "hi"'`, true},
		{`steps.a.outputs.missing == ""`, true},
		{`params.empty == ''`, true},
		{`steps.b-2.outputs.n == "3"`, true},
		{`!(steps.a.outputs.k == "v")`, false},
		{`!!true`, true},
		{`steps.a.state == "succeeded" && params.env == "prod"`, true},
		{`steps.a.state == "failed" || params.env == "prod"`, true},
		{`steps.a.state == "failed" || params.env == "dev"`, false},
		// && binds tighter than ||.
		{`true || false && false`, true},
		{`(true || false) && false`, false},
		{`false && true || true`, true},
		// ! binds tighter than ==, which binds tighter than && and ||.
		{`!false == true`, true},
		{`(steps.a.outputs.k == "v") == (params.env == "dev")`, false},
		{`(steps.a.outputs.k == "v") != (params.env == "dev")`, true},
		{" \t\nsteps.a.outputs.k\n==\t'v' ", true},
		{`"a\nb" != 'a\tb'`, true},
	}
	for _, tt := range tests {
		t.Run(tt.cond, func(t *testing.T) {
			e, _, err := parseCondition(tt.cond)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got := e.evalBool(look); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConditionRefs(t *testing.T) {
	_, refs, err := parseCondition(`steps.a.outputs.k == params.p || steps.b.state != "x"`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range refs {
		got = append(got, r.String())
	}
	if want := "steps.a.outputs.k params.p steps.b.state"; strings.Join(got, " ") != want {
		t.Errorf("got %s, want %s", strings.Join(got, " "), want)
	}
}

func TestConditionErrors(t *testing.T) {
	tests := []struct{ cond, want string }{
		{``, "the condition is empty"},
		{`   `, "the condition is empty"},
		{`steps.a.outputs.k`, `the condition must be true or false, but steps.a.outputs.k is a string: compare it, as in steps.a.outputs.k == "yes"`},
		{`"yes"`, `the condition must be true or false, but "yes" is a string`},
		{`steps.a.outputs.k == "v" &&`, `column 28: expected a value (a reference such as steps.a.outputs.k, a quoted string, true, false or a parenthesis), found the end of the condition`},
		{`steps.a.outputs.k = "v"`, `column 19: '=' is not an operator: use ==, !=, && or ||`},
		{`true & false`, `column 6: '&' is not an operator`},
		{`true | false`, `column 6: '|' is not an operator`},
		{`steps.a.outputs.k == "v`, `column 22: string is not closed`},
		{`steps.a.outputs.k == "\x"`, `column 22: unknown escape \x in string`},
		{`steps.a.outputs.k == "v" "w"`, `column 26: unexpected the string "w"`},
		{`(true`, `column 6: expected ) to close the ( at column 1, found the end of the condition`},
		{`true)`, `column 5: unexpected ")"`},
		{`()`, `column 2: expected a value`},
		{`!steps.a.outputs.k`, `column 1: ! needs a true/false operand, but steps.a.outputs.k is a string`},
		{`steps.a.outputs.k && true`, `column 19: && needs true/false operands, but steps.a.outputs.k is a string`},
		{`true || params.x`, `column 6: || needs true/false operands, but params.x is a string`},
		{`steps.a.outputs.k == true`, `column 19: == compares a string with a true/false value: compare a string with a string`},
		{`steps.a.outputs.k == "v" == "w"`, `column 26: unexpected "=="`},
		{`os.exit == "1"`, `column 1: unknown reference "os.exit": use params.NAME, steps.STEP.outputs.KEY or steps.STEP.state`},
		{`steps.a.outputs == "1"`, `unknown reference "steps.a.outputs"`},
		{`steps.A.state == "x"`, `"A" is not a valid step name`},
		{`params.1x == "x"`, `"1x" is not a valid param name`},
		{`steps.a.outputs.k.x == "x"`, `unknown reference`},
		{`steps.a.outputs.k == "v" ; rm -rf /`, `column 26: unexpected character ';'`},
		{`len(steps.a.outputs.k) == "1"`, `column 1: unknown reference "len": use params.NAME`},
	}
	for _, tt := range tests {
		t.Run(tt.cond, func(t *testing.T) {
			_, _, err := parseCondition(tt.cond)
			if err == nil {
				t.Fatalf("got no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to contain %q", err, tt.want)
			}
		})
	}
}
