package db

import (
	"fmt"
	"math"
	"sort"
)

// Example is one decoded txt_db value. Fields holds the msgpack dict as
// decoded: nil, bool, int64, float64, string, []byte, []any and
// map[string]any. The typed accessors convert and check a field, and their
// errors name the db, the key and the field.
type Example struct {
	Fields map[string]any
	where  string
}

// NewExample wraps decoded fields; where prefixes accessor errors (for
// example "txt_db DIR: key \"123\"").
func NewExample(fields map[string]any, where string) Example {
	return Example{Fields: fields, where: where}
}

func (e Example) errorf(field, format string, args ...any) error {
	return fmt.Errorf("%s: field %q: %s", e.where, field, fmt.Sprintf(format, args...))
}

func (e Example) get(field string) (any, error) {
	v, ok := e.Fields[field]
	if !ok {
		return nil, e.errorf(field, "missing (fields: %v)", e.Keys())
	}
	return v, nil
}

// Keys returns the field names, sorted.
func (e Example) Keys() []string {
	out := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Has reports whether the field is present (possibly null).
func (e Example) Has(field string) bool {
	_, ok := e.Fields[field]
	return ok
}

// IsNull reports whether the field is present and null (Python None), as
// NLVR2's test-split target is.
func (e Example) IsNull(field string) bool {
	v, ok := e.Fields[field]
	return ok && v == nil
}

// InputIDs returns input_ids, the token ids without special tokens.
func (e Example) InputIDs() ([]int32, error) { return e.Ints("input_ids") }

// ImgFnames returns img_fname as a list: one name, or several for NLVR2
// pairs and VCR [gt, det].
func (e Example) ImgFnames() ([]string, error) { return e.Strings("img_fname") }

// Ints returns a list-of-integers field as int32s.
func (e Example) Ints(field string) ([]int32, error) {
	v, err := e.get(field)
	if err != nil {
		return nil, err
	}
	out, err := toInt32s(v)
	if err != nil {
		return nil, e.errorf(field, "%v", err)
	}
	return out, nil
}

// IntLists returns a list of integer lists (VCR input_ids_as, input_ids_rs).
func (e Example) IntLists(field string) ([][]int32, error) {
	v, err := e.get(field)
	if err != nil {
		return nil, err
	}
	l, ok := v.([]any)
	if !ok {
		return nil, e.errorf(field, "want a list of integer lists, got %s", describe(v))
	}
	out := make([][]int32, len(l))
	for i, x := range l {
		if out[i], err = toInt32s(x); err != nil {
			return nil, e.errorf(field, "element %d: %v", i, err)
		}
	}
	return out, nil
}

func toInt32s(v any) ([]int32, error) {
	l, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want a list of integers, got %s", describe(v))
	}
	out := make([]int32, len(l))
	for i, x := range l {
		n, ok := x.(int64)
		if !ok || n < math.MinInt32 || n > math.MaxInt32 {
			return nil, fmt.Errorf("element %d is %s, want an int32", i, describe(x))
		}
		out[i] = int32(n)
	}
	return out, nil
}

// String returns a str field (bin is accepted too: Python 2 era dbs).
func (e Example) String(field string) (string, error) {
	v, err := e.get(field)
	if err != nil {
		return "", err
	}
	switch s := v.(type) {
	case string:
		return s, nil
	case []byte:
		return string(s), nil
	}
	return "", e.errorf(field, "want a string, got %s", describe(v))
}

// Strings returns a field holding a string or a list of strings as a list.
func (e Example) Strings(field string) ([]string, error) {
	v, err := e.get(field)
	if err != nil {
		return nil, err
	}
	switch s := v.(type) {
	case string:
		return []string{s}, nil
	case []byte:
		return []string{string(s)}, nil
	case []any:
		out := make([]string, len(s))
		for i, x := range s {
			switch x := x.(type) {
			case string:
				out[i] = x
			case []byte:
				out[i] = string(x)
			default:
				return nil, e.errorf(field, "element %d is %s, want a string", i, describe(x))
			}
		}
		return out, nil
	}
	return nil, e.errorf(field, "want a string or a list of strings, got %s", describe(v))
}

// Int returns an integer field (a bool counts as 0/1, as in Python).
func (e Example) Int(field string) (int64, error) {
	v, err := e.get(field)
	if err != nil {
		return 0, err
	}
	switch n := v.(type) {
	case int64:
		return n, nil
	case bool:
		if n {
			return 1, nil
		}
		return 0, nil
	}
	return 0, e.errorf(field, "want an integer, got %s", describe(v))
}

// Float returns a numeric field as float64.
func (e Example) Float(field string) (float64, error) {
	v, err := e.get(field)
	if err != nil {
		return 0, err
	}
	f, ok := toFloat(v)
	if !ok {
		return 0, e.errorf(field, "want a number, got %s", describe(v))
	}
	return f, nil
}

// Floats returns a list-of-numbers field (VQA target scores, RE bbox).
func (e Example) Floats(field string) ([]float64, error) {
	v, err := e.get(field)
	if err != nil {
		return nil, err
	}
	l, ok := v.([]any)
	if !ok {
		return nil, e.errorf(field, "want a list of numbers, got %s", describe(v))
	}
	out := make([]float64, len(l))
	for i, x := range l {
		if out[i], ok = toFloat(x); !ok {
			return nil, e.errorf(field, "element %d is %s, want a number", i, describe(x))
		}
	}
	return out, nil
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	}
	return 0, false
}

// Map returns a nested dict field (the VQA/VE target {labels, scores}).
func (e Example) Map(field string) (Example, error) {
	v, err := e.get(field)
	if err != nil {
		return Example{}, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return Example{}, e.errorf(field, "want a dict, got %s", describe(v))
	}
	return Example{Fields: m, where: fmt.Sprintf("%s: field %q", e.where, field)}, nil
}

// describe names a decoded value's type and a short rendering of it, for
// error messages.
func describe(v any) string {
	var kind string
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		kind = "bool"
	case int64, uint64:
		kind = "int"
	case float64:
		kind = "float"
	case string:
		kind = "str"
	case []byte:
		kind = "bytes"
	case []any:
		kind = "list"
	case map[string]any:
		kind = "dict"
	default:
		kind = fmt.Sprintf("%T", v)
	}
	s := fmt.Sprintf("%v", v)
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return fmt.Sprintf("%s %s", kind, s)
}
