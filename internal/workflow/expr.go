package workflow

import (
	"fmt"
	"strings"
)

// refKind is what a reference names.
type refKind int

const (
	refParam  refKind = iota // params.KEY
	refOutput                // steps.STEP.outputs.KEY
	refState                 // steps.STEP.state (conditions only)
)

// ref is a parsed reference to a parameter, a step's output or a step's
// final state.
type ref struct {
	kind refKind
	step string
	key  string
}

func (r ref) String() string {
	switch r.kind {
	case refParam:
		return "params." + r.key
	case refOutput:
		return "steps." + r.step + ".outputs." + r.key
	default:
		return "steps." + r.step + ".state"
	}
}

const refForms = "params.NAME, steps.STEP.outputs.KEY or steps.STEP.state"

// parseRef parses a dotted path. allowState says whether steps.STEP.state
// may appear (in conditions, not in job templates).
func parseRef(path string, allowState bool) (ref, error) {
	p := strings.Split(path, ".")
	forms := refForms
	if !allowState {
		forms = "params.NAME or steps.STEP.outputs.KEY"
	}
	switch {
	case len(p) == 2 && p[0] == "params":
		if !validKey(p[1]) {
			return ref{}, fmt.Errorf("%q is not a valid param name", p[1])
		}
		return ref{kind: refParam, key: p[1]}, nil
	case len(p) == 4 && p[0] == "steps" && p[2] == "outputs":
		if checkStepName(p[1]) != nil {
			return ref{}, fmt.Errorf("%q is not a valid step name", p[1])
		}
		if !validKey(p[3]) {
			return ref{}, fmt.Errorf("%q is not a valid output key", p[3])
		}
		return ref{kind: refOutput, step: p[1], key: p[3]}, nil
	case allowState && len(p) == 3 && p[0] == "steps" && p[2] == "state":
		if checkStepName(p[1]) != nil {
			return ref{}, fmt.Errorf("%q is not a valid step name", p[1])
		}
		return ref{kind: refState, step: p[1]}, nil
	}
	return ref{}, fmt.Errorf("unknown reference %q: use %s", path, forms)
}

// lookup returns the value of a reference at evaluation time.
type lookup func(ref) string

// boolExpr and strExpr are the two types of the condition language: a
// condition is a boolExpr, and only strings are compared. Types are checked
// when the condition is parsed, so evaluation cannot fail.
type boolExpr interface {
	evalBool(lookup) bool
}

type strExpr interface {
	evalStr(lookup) string
}

type (
	boolLit bool
	strLit  string
	refExpr ref
	notExpr struct{ x boolExpr }
	andExpr struct{ l, r boolExpr }
	orExpr  struct{ l, r boolExpr }
	cmpExpr struct {
		l, r strExpr
		eq   bool
	}
	boolCmpExpr struct {
		l, r boolExpr
		eq   bool
	}
)

func (b boolLit) evalBool(lookup) bool       { return bool(b) }
func (s strLit) evalStr(lookup) string       { return string(s) }
func (r refExpr) evalStr(f lookup) string    { return f(ref(r)) }
func (e notExpr) evalBool(f lookup) bool     { return !e.x.evalBool(f) }
func (e andExpr) evalBool(f lookup) bool     { return e.l.evalBool(f) && e.r.evalBool(f) }
func (e orExpr) evalBool(f lookup) bool      { return e.l.evalBool(f) || e.r.evalBool(f) }
func (e cmpExpr) evalBool(f lookup) bool     { return (e.l.evalStr(f) == e.r.evalStr(f)) == e.eq }
func (e boolCmpExpr) evalBool(f lookup) bool { return (e.l.evalBool(f) == e.r.evalBool(f)) == e.eq }

// Tokens of the condition language.
type tokKind int

const (
	tokEOF tokKind = iota
	tokPath
	tokString
	tokOp
)

type token struct {
	kind tokKind
	text string // the operator, the path, or the string's value
	pos  int    // byte offset in the source, for messages
}

func lex(src string) ([]token, error) {
	var toks []token
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case strings.HasPrefix(src[i:], "==") || strings.HasPrefix(src[i:], "!=") ||
			strings.HasPrefix(src[i:], "&&") || strings.HasPrefix(src[i:], "||"):
			toks = append(toks, token{tokOp, src[i : i+2], i})
			i += 2
		case c == '!' || c == '(' || c == ')':
			toks = append(toks, token{tokOp, src[i : i+1], i})
			i++
		case c == '"' || c == '\'':
			s, n, err := lexString(src[i:])
			if err != nil {
				return nil, fmt.Errorf("column %d: %v", i+1, err)
			}
			toks = append(toks, token{tokString, s, i})
			i += n
		case isPathByte(c) && c != '-' && c != '.':
			j := i
			for j < len(src) && isPathByte(src[j]) {
				j++
			}
			toks = append(toks, token{tokPath, src[i:j], i})
			i = j
		case c == '=' || c == '&' || c == '|':
			return nil, fmt.Errorf("column %d: %q is not an operator: use ==, !=, && or ||", i+1, c)
		default:
			return nil, fmt.Errorf("column %d: unexpected character %q", i+1, rune(c))
		}
	}
	return append(toks, token{tokEOF, "", len(src)}), nil
}

func isPathByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

// lexString reads a string literal in double or single quotes at the start
// of s, with the escapes \\, \", \', \n and \t. It returns the value and the
// number of bytes read.
func lexString(s string) (string, int, error) {
	q := s[0]
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == q:
			return b.String(), i + 1, nil
		case c == '\\':
			if i+1 == len(s) {
				return "", 0, fmt.Errorf("string is not closed")
			}
			i++
			switch s[i] {
			case '\\', '"', '\'':
				b.WriteByte(s[i])
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			default:
				return "", 0, fmt.Errorf("unknown escape \\%c in string: use \\\\, \\\", \\', \\n or \\t", s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, fmt.Errorf("string is not closed")
}

// operand is a parsed sub-expression of either type.
type operand struct {
	b    boolExpr // set for a true/false value
	s    strExpr  // set for a string
	pos  int
	desc string // how to name it in a type error
}

type parser struct {
	toks []token
	i    int
	refs []ref
}

// parseCondition parses a `when` condition and returns it with the
// references it makes, in order. Errors name the column (from 1).
func parseCondition(src string) (boolExpr, []ref, error) {
	e, refs, err := parseConditionRaw(src)
	if err != nil {
		return nil, nil, invalid("when %q: %v", src, err)
	}
	return e, refs, nil
}

func parseConditionRaw(src string) (boolExpr, []ref, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, nil, err
	}
	p := &parser{toks: toks}
	if p.peek().kind == tokEOF {
		return nil, nil, fmt.Errorf("the condition is empty")
	}
	o, err := p.or()
	if err != nil {
		return nil, nil, err
	}
	if t := p.peek(); t.kind != tokEOF {
		return nil, nil, fmt.Errorf("column %d: unexpected %s", t.pos+1, describe(t))
	}
	if o.b == nil {
		return nil, nil, fmt.Errorf("the condition must be true or false, but %s is a string: compare it, as in %s == \"yes\"", o.desc, o.desc)
	}
	return o.b, p.refs, nil
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token { t := p.toks[p.i]; p.i++; return t }

func (p *parser) or() (operand, error) {
	l, err := p.and()
	if err != nil {
		return l, err
	}
	for p.peek().text == "||" && p.peek().kind == tokOp {
		op := p.next()
		r, err := p.and()
		if err != nil {
			return r, err
		}
		if err := needBools(op, l, r); err != nil {
			return l, err
		}
		l = operand{b: orExpr{l.b, r.b}, pos: l.pos, desc: "the || expression"}
	}
	return l, nil
}

func (p *parser) and() (operand, error) {
	l, err := p.unary()
	if err != nil {
		return l, err
	}
	for p.peek().text == "&&" && p.peek().kind == tokOp {
		op := p.next()
		r, err := p.unary()
		if err != nil {
			return r, err
		}
		if err := needBools(op, l, r); err != nil {
			return l, err
		}
		l = operand{b: andExpr{l.b, r.b}, pos: l.pos, desc: "the && expression"}
	}
	return l, nil
}

func (p *parser) unary() (operand, error) {
	if t := p.peek(); t.kind == tokOp && t.text == "!" {
		p.next()
		x, err := p.unary()
		if err != nil {
			return x, err
		}
		if x.b == nil {
			return x, fmt.Errorf("column %d: ! needs a true/false operand, but %s is a string", t.pos+1, x.desc)
		}
		return operand{b: notExpr{x.b}, pos: t.pos, desc: "the ! expression"}, nil
	}
	return p.comparison()
}

func (p *parser) comparison() (operand, error) {
	l, err := p.primary()
	if err != nil {
		return l, err
	}
	t := p.peek()
	if t.kind != tokOp || t.text != "==" && t.text != "!=" {
		return l, nil
	}
	p.next()
	r, err := p.primary()
	if err != nil {
		return r, err
	}
	eq := t.text == "=="
	switch {
	case l.s != nil && r.s != nil:
		return operand{b: cmpExpr{l.s, r.s, eq}, pos: l.pos, desc: "the " + t.text + " comparison"}, nil
	case l.b != nil && r.b != nil:
		return operand{b: boolCmpExpr{l.b, r.b, eq}, pos: l.pos, desc: "the " + t.text + " comparison"}, nil
	}
	return l, fmt.Errorf("column %d: %s compares %s with %s: compare a string with a string", t.pos+1, t.text, kindOf(l), kindOf(r))
}

func (p *parser) primary() (operand, error) {
	t := p.next()
	switch t.kind {
	case tokString:
		return operand{s: strLit(t.text), pos: t.pos, desc: fmt.Sprintf("%q", t.text)}, nil
	case tokPath:
		switch t.text {
		case "true", "false":
			return operand{b: boolLit(t.text == "true"), pos: t.pos, desc: t.text}, nil
		}
		r, err := parseRef(t.text, true)
		if err != nil {
			return operand{}, fmt.Errorf("column %d: %v", t.pos+1, err)
		}
		p.refs = append(p.refs, r)
		return operand{s: refExpr(r), pos: t.pos, desc: t.text}, nil
	case tokOp:
		if t.text == "(" {
			o, err := p.or()
			if err != nil {
				return o, err
			}
			if c := p.next(); c.kind != tokOp || c.text != ")" {
				return o, fmt.Errorf("column %d: expected ) to close the ( at column %d, found %s", c.pos+1, t.pos+1, describe(c))
			}
			o.pos = t.pos
			return o, nil
		}
	}
	return operand{}, fmt.Errorf("column %d: expected a value (a reference such as %s, a quoted string, true, false or a parenthesis), found %s", t.pos+1, "steps.a.outputs.k", describe(t))
}

func needBools(op token, l, r operand) error {
	for _, o := range []operand{l, r} {
		if o.b == nil {
			return fmt.Errorf("column %d: %s needs true/false operands, but %s is a string: compare it, as in %s == \"yes\"", op.pos+1, op.text, o.desc, o.desc)
		}
	}
	return nil
}

func kindOf(o operand) string {
	if o.b != nil {
		return "a true/false value"
	}
	return "a string"
}

func describe(t token) string {
	switch t.kind {
	case tokEOF:
		return "the end of the condition"
	case tokString:
		return fmt.Sprintf("the string %q", t.text)
	}
	return fmt.Sprintf("%q", t.text)
}

// segment is a piece of a job template: literal text or a reference.
type segment struct {
	literal bool
	text    string
	ref     ref
}

// parseTemplate splits s into literal text and ${...} references. "$${"
// stands for a literal "${"; a '$' not followed by '{' is literal, so shell
// variables such as $HOME pass through unchanged.
func parseTemplate(s string) ([]segment, error) {
	var segs []segment
	var lit strings.Builder
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			lit.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return nil, fmt.Errorf("${ at byte %d is not closed with }", i)
			}
			path := strings.TrimSpace(s[i+2 : i+end])
			if path == "" {
				return nil, fmt.Errorf("${} at byte %d is empty: write ${params.NAME} or ${steps.STEP.outputs.KEY} (or $${ for a literal ${)", i)
			}
			r, err := parseRef(path, false)
			if err != nil {
				return nil, fmt.Errorf("${%s}: %v (write $${ for a literal ${)", path, err)
			}
			if lit.Len() > 0 {
				segs = append(segs, segment{literal: true, text: lit.String()})
				lit.Reset()
			}
			segs = append(segs, segment{ref: r})
			i += end + 1
		default:
			lit.WriteByte(s[i])
			i++
		}
	}
	if lit.Len() > 0 {
		segs = append(segs, segment{literal: true, text: lit.String()})
	}
	return segs, nil
}
