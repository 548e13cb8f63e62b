// process/remote_ptr.h — an address in the target's address space.
//
// A RemotePtr cannot be dereferenced here: it only names bytes over there. Arithmetic is
// in units of T, like a pointer, so offsets into remote structs read naturally.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <type_traits>

namespace polus {

template <typename T>
class RemotePtr {
 public:
  constexpr RemotePtr() = default;
  constexpr explicit RemotePtr(uint64_t address) : address_(address) {}
  template <typename U>
  constexpr RemotePtr(RemotePtr<U> other)  // NOLINT: conversion to void*-like is free
    requires std::is_void_v<T>
      : address_(other.address()) {}

  constexpr uint64_t address() const { return address_; }
  constexpr bool is_null() const { return address_ == 0; }
  constexpr explicit operator bool() const { return address_ != 0; }

  template <typename U>
  constexpr RemotePtr<U> cast() const { return RemotePtr<U>(address_); }

  constexpr RemotePtr operator+(int64_t count) const { return RemotePtr(address_ + count * stride()); }
  constexpr RemotePtr operator-(int64_t count) const { return RemotePtr(address_ - count * stride()); }
  constexpr RemotePtr& operator+=(int64_t count) { address_ += count * stride(); return *this; }
  constexpr auto operator<=>(const RemotePtr&) const = default;

 private:
  static constexpr int64_t stride() {
    if constexpr (std::is_void_v<T>) return 1;
    else return sizeof(T);
  }
  uint64_t address_ = 0;
};

using RemoteAddr = RemotePtr<void>;

}  // namespace polus

template <typename T>
struct std::hash<polus::RemotePtr<T>> {
  size_t operator()(polus::RemotePtr<T> p) const { return std::hash<uint64_t>()(p.address()); }
};
