// binary/symbol_names.h — names as people write them, against names as ELF files spell them.
//
// A patch names a target function or global the way its author knows it: "format_reply",
// "greeter.c:format_reply" (a file-static), "libfoo.so.1!name" (one object), and for C++
// the way c++filt and gdb print it — "shop::Pricer::price(int) const", or "shop::Pricer::price"
// when no overload makes it ambiguous — or the mangled name itself. Symbol tables hold the
// mangled names; this file takes a written name apart, demangles (abi::__cxa_demangle, from
// libstdc++) and derives the forms a C++ function may be written in, and recognises the
// suffixes gcc gives the copies it makes of a function (".constprop.0", ".isra.0",
// ".part.0", ".cold", ".lto_priv.0").
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace polus {

/// A name as a patch writes it, taken apart: "object!file.c:name".
struct SymbolSpec {
  std::string object;  // "" = any object
  std::string file;    // "" = any source file
  std::string name;    // the rest: a plain, mangled or demangled C++ name
};

/// Splits "object!file.c:name" (object and file optional). The object is what precedes the
/// first '!' unless that reads as part of a C++ name (`operator!`, `operator!=`, anything
/// with "::", '(' or '<' before it); the file is what precedes the first single ':' — a
/// C++ "::" is never taken for it — when that part has no '(', '<' or space. A trailing
/// "@@VERSION" (the default version, which symbols carry as the plain name) is dropped.
SymbolSpec parse_symbol_spec(std::string_view text);

/// "shop::Pricer::price(int) const" for "_ZNK4shop6Pricer5priceEi"; "" if `name` is not an
/// Itanium-ABI mangled name or does not demangle.
std::string demangle(std::string_view name);

/// The ways a demangled C++ function name may be written, each in canonical spacing
/// (canonical_cxx_name): with or without the return type a template instance's name
/// carries, with or without the parameter list, and without the last template argument
/// list ("shop::max_of" for "int shop::max_of<int>(int, int)").
struct CxxNameForms {
  std::string full;              // as demangled: "int shop::max_of<int>(int, int)"
  std::string signature;         // without a return type: "shop::max_of<int>(int,int)"
  std::string bare;              // without the parameter list: "shop::max_of<int>"
  std::string bare_untemplated;  // and without the last template arguments: "shop::max_of"
};
CxxNameForms cxx_name_forms(const std::string& demangled);

/// `text` with spaces kept only between two identifier characters ("unsigned int",
/// "operator new"), so "price( int )const" and "price(int) const" compare equal, as do
/// "A<B<int> >" and "A<B<int>>".
std::string canonical_cxx_name(std::string_view text);

/// What gcc made of a function when it copied it: the suffix it appended to the name.
enum class CloneKind {
  kSameFunction,  // ".lto_priv.N" (a static renamed by LTO), ".localalias": the function itself
  kColdPart,      // ".cold", ".cold.N": the function's unlikely paths, entered only from it
  kPart,          // ".part.N": the body of a partially inlined function (callers inline its head)
  kSpecialised,   // ".constprop.N", ".isra.N", ".clone.N", ".specialized.N": a copy with fewer or
                  // changed parameters, which its callers call instead of the function
};

struct CloneName {
  std::string base;    // the name gcc copied: "make_reply" for "make_reply.constprop.0"
  std::string suffix;  // ".constprop.0"
  CloneKind kind = CloneKind::kSpecialised;  // the most consequential of the suffix's parts
};

/// The clone suffix of a symbol name, if it has one ("make_reply.isra.0.constprop.1" →
/// base "make_reply", suffix ".isra.0.constprop.1", kind kSpecialised).
std::optional<CloneName> split_clone_name(std::string_view name);

/// What the name of one symbol says beyond itself (binary/symbol_match.h computes it once per
/// symbol table).
struct SymbolNames {
  std::optional<CloneName> clone;  // the clone suffix, if the name has one
  CxxNameForms forms;              // of the (clone-stripped) demangled name; empty for C names
};

/// What a clone is, for messages: "a copy specialised for constant arguments (its callers pass
/// fewer arguments)".
std::string describe_clone(const CloneName& clone);

}  // namespace polus
