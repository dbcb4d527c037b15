package tandem

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes the API returns in {"error": {"code": ..., "message": ...}}.
const (
	EINVALID     = "invalid_argument"     // the request is malformed or a field is wrong
	ENOTFOUND    = "not_found"            // no such job, server or route
	EREMOVED     = "removed"              // the job or run finished and was removed by retention (docs/RETENTION.md)
	ECONFLICT    = "conflict"             // the request conflicts with the cluster's state
	EIDEMPOTENCY = "idempotency_mismatch" // the idempotency key was used for a different spec
	ETOOLARGE    = "payload_too_large"    // the body exceeds the limit
	EMEDIATYPE   = "unsupported_media_type"
	EMETHOD      = "method_not_allowed"
	EREFUSED     = "refused_auto_failover" // manual transition while automatic failover is on
	ENOTACTIVE   = "not_active"            // this server is not the active (and cannot redirect)
	ENOACTIVE    = "no_active"             // no active server is known right now
	EFENCED      = "fenced"                // the write was rejected: a newer active exists
	EUNAVAILABLE = "unavailable"           // etcd or a dependency is unreachable
	EINTERNAL    = "internal"

	EUNAUTHENTICATED = "unauthenticated"   // no token, or one that is unknown, revoked or expired
	EFORBIDDEN       = "permission_denied" // a valid token whose policy lacks the capability
)

// statusOf maps error codes to HTTP statuses: 4xx for the caller's mistakes,
// 5xx only for the server's (or the cluster's) state.
var statusOf = map[string]int{
	EINVALID:     http.StatusBadRequest,
	ENOTFOUND:    http.StatusNotFound,
	EREMOVED:     http.StatusGone,
	ECONFLICT:    http.StatusConflict,
	EIDEMPOTENCY: http.StatusUnprocessableEntity,
	ETOOLARGE:    http.StatusRequestEntityTooLarge,
	EMEDIATYPE:   http.StatusUnsupportedMediaType,
	EMETHOD:      http.StatusMethodNotAllowed,
	EREFUSED:     http.StatusConflict,
	ENOTACTIVE:   http.StatusServiceUnavailable,
	ENOACTIVE:    http.StatusServiceUnavailable,
	EFENCED:      http.StatusServiceUnavailable,
	EUNAVAILABLE: http.StatusServiceUnavailable,
	EINTERNAL:    http.StatusInternalServerError,

	EUNAUTHENTICATED: http.StatusUnauthorized,
	EFORBIDDEN:       http.StatusForbidden,
}

// HTTPStatus returns the HTTP status for an error code (500 for unknown codes).
func HTTPStatus(code string) int {
	if s, ok := statusOf[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Error is an error a user can act on: a code from the table above and a
// message in plain words. The client decodes API errors back into *Error, so
// the CLI prints the same words the server chose.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error implements error.
func (e *Error) Error() string { return e.Message }

// Is makes errors.Is(err, ErrFenced) and friends match any *Error with the
// same code, so a wrapped error or one decoded by the client matches too.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinel errors, matched by code (see Error.Is).
var (
	ErrNotActive = &Error{Code: ENOTACTIVE, Message: "this server is not the active server"}
	ErrNoActive  = &Error{Code: ENOACTIVE, Message: "no active server is known; an election is under way"}
	ErrFenced    = &Error{Code: EFENCED, Message: "write rejected: this server's epoch was superseded by a newer active"}
	ErrNotFound  = &Error{Code: ENOTFOUND, Message: "not found"}
	// ErrRemoved matches a job or workflow run that existed, finished and
	// was removed by retention: it is gone for good, not missing.
	ErrRemoved = &Error{Code: EREMOVED, Message: "removed by retention"}
)

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, or EINTERNAL.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the message of the first *Error in err's chain, or a
// generic message for internal errors (their details go to the server log).
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// ErrorBody is the JSON envelope of every API error.
type ErrorBody struct {
	Error *Error `json:"error"`
}
